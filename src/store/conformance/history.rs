//! A job's history: its events, gapless and in order, bounded by `events_max()` with the oldest
//! folded into a summary that adds up with the events held; and its log, ordered, cut at a
//! character boundary and trimmed when the job ends.

use super::fixtures::{
    Answer, checkpoint, claim, event_names, log_line, read_job, running_job, submit_new,
};
use crate::model::job::{EventKind, LeaseToken, Phase, Status};
use crate::store::{LOG_LINE_BYTES_MAX, LOG_LINES_MAX, StateStore, StepEvent};

/// A whole run leaves a gapless, ordered history that tells the job's story.
pub(super) async fn event_history_is_complete_and_in_order(store: &dyn StateStore) {
    let job = submit_new(store, "story").await;
    let token = claim(store, job.id).await;
    let download = checkpoint("download", 1);
    let skipped = StepEvent::Skipped {
        reason: "done before".to_string(),
    };
    // Setting the same phase again is not a change and writes no event.
    for phase in [Phase::Downloading, Phase::Downloading] {
        store.set_phase(&token, phase).await.accepted("set_phase");
    }
    let started = store
        .record_step_event(&token, "download", StepEvent::Started)
        .await;
    started.accepted("step event");
    let recorded = store.record_checkpoint(&token, &download, None).await;
    recorded.accepted("checkpoint");
    let phase = store.set_phase(&token, Phase::Processing).await;
    phase.accepted("set_phase");
    let recorded = store.record_step_event(&token, "extract", skipped).await;
    recorded.accepted("step event");
    let completed = store.complete(&token).await.accepted("complete");

    let events = store.events(job.id).await.expect("events");
    assert_eq!(events.len(), 11, "{:?}", event_names(&events));
    assert_eq!(
        event_names(&events[..9]),
        vec![
            "submitted",
            "status_changed",
            "status_changed",
            "phase_changed",
            "step_started",
            "step_completed",
            "checkpoint_recorded",
            "phase_changed",
            "step_skipped",
        ]
    );
    for (index, event) in events.iter().enumerate() {
        assert_eq!(
            event.seq,
            u64::try_from(index).expect("small"),
            "gapless sequence"
        );
    }
    assert_eq!(
        completed.events_next,
        u64::try_from(events.len()).expect("small")
    );
    assert_eq!(
        events[1].kind,
        EventKind::StatusChanged {
            from: None,
            to: Status::Pending,
            reason: "submitted".to_string()
        }
    );
    assert!(matches!(
        &events[2].kind,
        EventKind::StatusChanged {
            from: Some(Status::Pending),
            to: Status::Running,
            ..
        }
    ));
    assert_eq!(
        events[5].kind,
        EventKind::StepCompleted {
            step: "download".to_string(),
            outputs: 2
        }
    );
    assert_eq!(
        events[6].kind,
        EventKind::CheckpointRecorded {
            step: "download".to_string(),
            definition_hash: download.definition_hash,
            input_hash: download.input_hash,
            outputs: download
                .outputs
                .iter()
                .map(|output| (output.name.clone(), output.blake3))
                .collect(),
        }
    );
    // `complete` writes a status change and the phase's end, in the state machine's order.
    let mut last_names = event_names(&events[9..]);
    last_names.sort_unstable();
    assert_eq!(last_names, vec!["phase_changed", "status_changed"]);
    assert!(events[9..].iter().any(|event| matches!(
        &event.kind,
        EventKind::StatusChanged {
            from: Some(Status::Running),
            to: Status::Succeeded,
            ..
        }
    )));
    assert!(
        events.windows(2).all(|pair| pair[0].at <= pair[1].at),
        "event times do not go backwards"
    );
}

/// A job holds at most `events_max()` events: past the bound the oldest are folded into its
/// summary in the append's own write, so the summary and the events held always add up to the
/// whole history (numbered with no gap), the counts in the summary are the folded events', a
/// refused write changes neither, and deleting the job removes the summary too.
pub(super) async fn events_are_bounded_and_folded_into_a_summary(store: &dyn StateStore) {
    let events_max = store.events_max();
    let token = running_job(store, "bounded").await;
    let id = token.job_id;
    assert_eq!(store.event_summary(id).await.expect("summary"), None);
    let rounds = events_max * 2 + 5;
    let mut appended = 3; // submitted, pending, running
    for round in 0..rounds {
        let mut step_events = vec![("download", StepEvent::Started)];
        if round % 4 == 0 {
            let keys = vec![
                format!("blobs/aa/{}.mp4", round % 8),
                "jobs/x/manifest.json".into(),
            ];
            step_events.push(("store", StepEvent::ObjectsWritten { keys }));
        }
        for (step, event) in step_events {
            let recorded = store.record_step_event(&token, step, event).await;
            recorded.accepted("step event");
            appended += 1;
        }
        let held = store.events(id).await.expect("events");
        assert!(
            u64::try_from(held.len()).expect("small") <= events_max,
            "{} events held, bound {events_max}",
            held.len()
        );
    }

    let job = read_job(store, id).await;
    assert_eq!(job.events_next, appended);
    let held = store.events(id).await.expect("events");
    let summary = store
        .event_summary(id)
        .await
        .expect("summary")
        .expect("a history past the bound has a summary");
    assert_eq!(summary.job_id, id);
    let held_total = u64::try_from(held.len()).expect("small");
    assert_eq!(
        summary.events_compacted + held_total,
        job.events_next,
        "the summary and the events held are the whole history"
    );
    for (offset, event) in held.iter().enumerate() {
        assert_eq!(
            event.seq,
            summary.events_compacted + u64::try_from(offset).expect("small"),
            "gapless after the summary"
        );
    }
    assert_eq!(
        summary.kinds.iter().map(|(_, count)| count).sum::<u64>(),
        summary.events_compacted
    );
    // The claim was folded: a replay starts from the summary's status.
    assert_eq!(summary.status, Some(Status::Running));
    let held_where = |wanted: fn(&EventKind) -> bool| {
        let count = held.iter().filter(|event| wanted(&event.kind)).count();
        u64::try_from(count).expect("small")
    };
    let download = summary
        .steps
        .iter()
        .find(|step| step.step == "download")
        .expect("download in the summary");
    assert_eq!(
        download.executed + held_where(|kind| matches!(kind, EventKind::StepStarted { .. })),
        rounds,
        "every start is counted once, folded or held"
    );
    let manifest_writes_folded = summary
        .steps
        .iter()
        .flat_map(|step| &step.objects_written)
        .find(|(key, _)| key == "jobs/x/manifest.json")
        .map_or(0, |(_, count)| *count);
    let manifest_writes_held = held_where(|kind| matches!(kind, EventKind::ObjectsWritten { .. }));
    assert_eq!(
        manifest_writes_folded + manifest_writes_held,
        rounds.div_ceil(4)
    );

    // A refused write past the bound changes nothing.
    let stale = LeaseToken {
        job_id: id,
        fencing_token: token.fencing_token + 1,
    };
    let refused = store
        .record_step_event(&stale, "download", StepEvent::Started)
        .await;
    refused.fenced("a write under a future token");
    assert_eq!(store.events(id).await.expect("events"), held);
    assert_eq!(
        store.event_summary(id).await.expect("summary"),
        Some(summary)
    );

    store.complete(&token).await.accepted("complete");
    store
        .delete_job(id)
        .await
        .accepted("a succeeded job is deletable");
    assert_eq!(store.event_summary(id).await.expect("summary"), None);
    assert_eq!(store.events(id).await.expect("events"), vec![]);
}

/// A job's log reads back in order, long lines are cut at a character boundary, and a job that
/// ends keeps at most `LOG_LINES_MAX` lines: its newest.
pub(super) async fn logs_are_ordered_and_bounded(store: &dyn StateStore) {
    let token = running_job(store, "logs").await;
    let other = submit_new(store, "quiet").await;
    let lines_total = LOG_LINES_MAX + 5;
    for index in 0..lines_total {
        store.append_log(token.job_id, log_line(1, &format!("line {index}")));
    }
    store.append_log(other.id, log_line(1, "other job"));

    let logs = store.logs(token.job_id).await.expect("logs");
    assert_eq!(
        logs.len(),
        lines_total,
        "a running job's log is trimmed when it ends"
    );
    assert_eq!(logs[0].message, "line 0");
    assert_eq!(
        logs[lines_total - 1].message,
        format!("line {}", lines_total - 1)
    );

    store.complete(&token).await.accepted("complete");
    let logs = store.logs(token.job_id).await.expect("logs");
    assert_eq!(logs.len(), LOG_LINES_MAX);
    assert_eq!(logs[0].message, "line 5", "the oldest lines go first");
    assert_eq!(
        logs[LOG_LINES_MAX - 1].message,
        format!("line {}", lines_total - 1)
    );
    assert_eq!(
        store.logs(other.id).await.expect("logs"),
        vec![log_line(1, "other job")],
        "trimming one job's log leaves the others alone"
    );

    // 'é' is two bytes: a cut at an odd byte count must step back to a character boundary.
    let long = format!("x{}", "é".repeat(LOG_LINE_BYTES_MAX));
    store.append_log(other.id, log_line(1, &long));
    let logs = store.logs(other.id).await.expect("logs");
    let cut = &logs[1].message;
    assert!(
        cut.len() <= LOG_LINE_BYTES_MAX,
        "cut to {} bytes",
        cut.len()
    );
    assert!(
        cut.len() >= LOG_LINE_BYTES_MAX - 3,
        "cut no shorter than needed"
    );
    assert!(long.starts_with(cut.as_str()));
}
