//! A prune, decided (`narra prune`): which finished statuses may be pruned, what a prune would
//! remove and what it did, and the durations typed on the command line.
//!
//! Plain data: `engine::prune` reads the store to make a [`PrunePlan`] and carries it out.

use crate::model::job::{Incident, Job, JobId, PrunedJob, Status, Timestamp};

/// The statuses a job may be pruned in.
pub const PRUNABLE: [Status; 3] = [Status::Succeeded, Status::Failed, Status::Cancelled];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PruneOptions {
    /// Jobs last updated longer ago than this are pruned.
    pub older_than_ms: u64,
    /// Which finished statuses; all of [`PRUNABLE`] when empty.
    pub statuses: Vec<Status>,
}

/// What a prune would remove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrunePlan {
    /// Jobs last updated before this are pruned.
    pub cutoff: Timestamp,
    /// The finished statuses it prunes: those asked for, or all of [`PRUNABLE`].
    pub statuses: Vec<Status>,
    /// Oldest first.
    pub jobs: Vec<Job>,
}

/// What a confirmed prune did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pruned {
    /// The plan that was carried out.
    pub plan: PrunePlan,
    /// The tombstones of the jobs pruned: what is left of each.
    pub pruned: Vec<PrunedJob>,
    /// Jobs of the plan left alone, and why (they changed since the plan was made).
    pub refused: Vec<(JobId, String)>,
    /// The incident that records the run, when it pruned anything.
    pub incident: Option<Incident>,
}

/// Parses a duration typed on the command line: a whole number and one unit, `d`, `h`, `m` or
/// `s` (`30d`, `12h`, `90m`, `45s`). Returns milliseconds.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let invalid = || {
        format!(
            "invalid duration {text:?}: a whole number and a unit, d, h, m or s (30d, 12h, 90m, 45s)"
        )
    };
    let split = text
        .find(|character: char| !character.is_ascii_digit())
        .ok_or_else(invalid)?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| invalid())?;
    let unit_ms: u64 = match unit {
        "d" => 86_400_000,
        "h" => 3_600_000,
        "m" => 60_000,
        "s" => 1_000,
        _ => return Err(invalid()),
    };
    number
        .checked_mul(unit_ms)
        .ok_or_else(|| format!("duration {text:?} is too long"))
}

/// A duration in the largest unit that states it exactly (`30d`, `90m`).
pub fn duration_text(duration_ms: u64) -> String {
    if duration_ms == 0 {
        return "0s".to_string();
    }
    for (unit, unit_ms) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if duration_ms.is_multiple_of(unit_ms) {
            return format!("{}{unit}", duration_ms / unit_ms);
        }
    }
    format!("{duration_ms}ms")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_days_hours_minutes_and_seconds() {
        assert_eq!(parse_duration("30d"), Ok(30 * 86_400_000));
        assert_eq!(parse_duration("12h"), Ok(12 * 3_600_000));
        assert_eq!(parse_duration("90m"), Ok(90 * 60_000));
        assert_eq!(parse_duration(" 45s "), Ok(45_000));
        assert_eq!(parse_duration("0s"), Ok(0));
        for bad in ["", "30", "d", "1.5d", "-1d", "30 d", "30w", "30dd"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} is refused");
        }
        assert!(parse_duration("99999999999999999d").is_err());
        assert_eq!(duration_text(30 * 86_400_000), "30d");
        assert_eq!(duration_text(90 * 60_000), "90m");
        assert_eq!(duration_text(45_000), "45s");
        assert_eq!(duration_text(1), "1ms");
        assert_eq!(duration_text(0), "0s");
    }
}
