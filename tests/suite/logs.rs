//! A job's own log lines (runbook step 2).

use super::fixture::{Home, id_of, sample_video};

// Guards `logs`: a finished job's own lines tell its steps, as text and as JSON lines.
#[test]
fn logs_tell_a_finished_jobs_steps_as_text_and_json() {
    let home = Home::new();
    let source = sample_video().to_str().expect("a UTF-8 path");
    let id = id_of(&home.one_job(&["ingest", source], 0));

    let text = home.narra(&["logs", &id]);

    assert!(
        text.status.success(),
        "{}",
        String::from_utf8_lossy(&text.stderr)
    );
    let text = String::from_utf8(text.stdout).expect("UTF-8 logs");
    for word in ["downloaded", "extracted", "stored"] {
        assert!(text.contains(word), "the logs mention {word:?}:\n{text}");
    }

    let json = home.narra(&["--json", "logs", &id]);

    assert!(
        json.status.success(),
        "{}",
        String::from_utf8_lossy(&json.stderr)
    );
    let json = String::from_utf8(json.stdout).expect("UTF-8 logs");
    let lines: Vec<serde_json::Value> = json
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|error| panic!("{error}: {line}")))
        .collect();
    assert_eq!(
        lines.len(),
        text.lines().count(),
        "one JSON line per text line"
    );
    for line in &lines {
        let at = line["at"]
            .as_str()
            .unwrap_or_else(|| panic!("at in {line}"));
        chrono::DateTime::parse_from_rfc3339(at).unwrap_or_else(|error| panic!("{error}: {at}"));
        assert!(line["level"].is_string(), "{line}");
        assert!(line["message"].is_string(), "{line}");
    }
    assert!(
        lines.iter().any(|line| line["message"]
            .as_str()
            .is_some_and(|message| message.contains("downloaded"))),
        "{json}"
    );
}
