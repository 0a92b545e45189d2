//! Fault injection: the scratch disk fills up mid-download.
//!
//! The other injected faults are tested where they live: the state directory held by another narra
//! (`lock.rs`), a corrupted state record (`src/store/sled_store.rs`,
//! `a_corrupted_job_record_is_named_and_leaves_the_other_jobs_working`), object storage unavailable
//! for a while (`s3.rs`, `an_outage_during_store_is_waited_out_without_redownloading`).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::fixture::{Home, Origin, id_of, sample_video};

/// A tmpfs mounted over a directory for the test's length, unmounted when dropped. Its root is
/// 0700, as narra makes the directories it creates.
pub(super) struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (mount's syntax: `16k`, `8m`) at `path`; `None` when this process
    /// may not mount (not root, or no mount namespace), so the caller can say it did not run.
    pub(super) fn mount(path: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(path).expect("create the mount point");
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(path)
            .stderr(std::process::Stdio::null())
            .status()
            .ok()?;
        status.success().then(|| Tmpfs {
            path: path.to_path_buf(),
        })
    }

    fn resize(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.path)
            .status()
            .expect("mount runs");
        assert!(
            status.success(),
            "remount {} with size {size}",
            self.path.display()
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

/// A workflows directory (for `--workflows`) whose `ingest` keeps no scratch reserve, so a download
/// starts whatever the free space and runs into a full disk instead of waiting for space.
pub(super) fn workflows_without_scratch_reserve(home: &Home) -> String {
    const BUILTIN: &str = include_str!("../../workflows/ingest.toml");
    const DOWNLOAD_PARAMS: &str =
        "params = { connect_timeout_s = 10, read_timeout_s = 30, total_timeout_s = 21600 }";
    let workflows = home.dir.path().join("workflows");
    std::fs::create_dir_all(&workflows).expect("create the workflows directory");
    std::fs::write(
        workflows.join("ingest.toml"),
        BUILTIN.replacen(DOWNLOAD_PARAMS, "params = { scratch_reserve_mb = 0 }", 1),
    )
    .expect("write ingest.toml");
    workflows.to_str().expect("UTF-8").to_string()
}

// Guards the scratch-full promise: a download that runs out of scratch space fails the job with
// `scratch_error` and a message saying so, records no checkpoint and leaves nothing at the final
// name; once space returns, a retry downloads, extracts and stores the job, and it verifies. The
// source announces no size and the scratch reserve is 0, so the download starts (a source that
// announces more than the free space waits instead: `scheduling.rs`).
#[test]
fn a_full_scratch_disk_fails_the_job_clearly_and_a_retry_recovers_once_space_returns() {
    let home = Home::new();
    let origin = Origin::start();
    let url = origin.serve_video("videos/sample.mp4", sample_video());
    origin.unannounce("videos/sample.mp4");
    let workflows = workflows_without_scratch_reserve(&home);
    let video_bytes = std::fs::metadata(sample_video()).expect("the sample").len();
    assert!(
        video_bytes > 16 * 1024,
        "the sample outgrows the tiny scratch disk"
    );
    let scratch = home.path().join("scratch");
    let Some(tmpfs) = Tmpfs::mount(&scratch, "16k") else {
        eprintln!(
            "skipped: cannot mount a tmpfs here (needs root); the scratch-full test did not run"
        );
        return;
    };

    let failed = home.one_job(&["--workflows", &workflows, "ingest", &url], 1);
    let id = id_of(&failed);
    assert_eq!(failed["status"], "failed");
    assert_eq!(
        failed["error"]["class"], "scratch_error",
        "{}",
        failed["error"]
    );
    let message = failed["error"]["message"].as_str().expect("a message");
    assert!(
        message.contains("No space left on device"),
        "the error says why: {message}"
    );
    let show = home.show(&id);
    assert_eq!(
        show["checkpoints"],
        serde_json::json!([]),
        "no checkpoint of a partial download"
    );
    assert!(
        !scratch.join(&id).join("original").exists(),
        "nothing at the final name"
    );

    tmpfs.resize("8m");
    let retried = home.one_job(&["--workflows", &workflows, "retry", &id], 0);
    assert_eq!(retried["status"], "succeeded", "{retried}");
    assert_eq!(home.json(&["verify", &id], 0)[0]["ok"], true);
    assert_eq!(home.json(&["audit", &id], 0)[0]["violations"], 0);
}
