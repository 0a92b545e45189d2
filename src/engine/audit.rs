//! Idempotency audits (`narra audit`): each job's checkpoint chain read back from its event history,
//! and the findings that say whether the engine kept its promises.
//!
//! The history is the evidence. The worker records why a step that has a checkpoint runs again
//! (`step_redone`), which objects each store run wrote (`objects_written`), and the store records
//! every checkpoint's hashes with it (`checkpoint_recorded`). `model::audit::analyze` is a pure
//! function of those events, the incident log and the writes other jobs made of the same blobs;
//! [`audit_job`] reads them and adds what only the state store and the object store can say (the
//! current checkpoints, whether storage agrees with them, whether the manifest's blobs exist,
//! whether the blob index agrees).
//!
//! Findings and their severity:
//!
//! | kind | severity | meaning |
//! |---|---|---|
//! | `rerun_without_cause` | violation | a step with a checkpoint ran again and no cause was recorded (warning in histories written before narra recorded causes) |
//! | `rerun_cause_false` | violation | the recorded cause is `earlier_step_ran` but no earlier step ran in that run |
//! | `rerun_after_skip` | violation | a step ran after it was skipped as verified in the same run |
//! | `outputs_differ` | violation | two runs of the same step definition on the same input recorded different outputs |
//! | `source_changed` | info | the same, for `download`: the origin served other bytes for the same source |
//! | `object_rewritten` | violation | a content-addressed blob was written again though nothing showed it missing or changed |
//! | `object_restored` | info | a blob written again after a verification failure or a cleanup deletion |
//! | `manifest_names_missing_blob` | violation | the job's manifest names a blob that does not exist |
//! | `manifest_unreadable` | violation | the store checkpoint names a manifest that is missing or not a manifest |
//! | `storage_disagrees` | violation (succeeded jobs), warning (others) | an artifact is missing or does not match its checkpoint (shallow `verify`) |
//! | `index_disagrees` | violation | the blob -> jobs index does not list this job for a blob its checkpoint names |
//! | `history_truncated` | warning | a compacted history held more findings or blob writes than its summary keeps (`model::history`'s bounds) |
//!
//! Limits: a store run that fails records no `objects_written` (a retry skips what it stored, so no
//! write is counted twice); writes by other jobs are found through the blob index, so a job that no
//! longer references a blob it once wrote is not compared; manifests are not compared across writes,
//! since their bytes change with their job's outputs. `narra retry --from STEP` records
//! `step_redone {checkpoint_discarded}` for each checkpoint it discards: the step's next run is then
//! a first run, not a re-run.
//!
//! This module only reads: it never writes to the state store or to storage.

use std::collections::{HashMap, HashSet};

use crate::engine::Engine;
use crate::engine::verify::verify_job;
use crate::model::audit::{
    BlobWrite, Finding, JobAudit, Severity, StepAudit, blob_writes, evaluate, folded_blob_writes,
};
use crate::model::history::{self, BLOB_PREFIX};
use crate::model::job::{Checkpoint, Incident, Job, JobId, Location, Status};
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("job {0} not found")]
    NotFound(JobId),
}

/// Audits jobs: `ids`, or every job when `ids` is empty (newest first).
pub async fn audit_jobs(engine: &Engine, ids: &[JobId]) -> Result<Vec<JobAudit>, AuditError> {
    let jobs = if ids.is_empty() {
        engine.all_jobs(None).await?
    } else {
        let mut jobs = Vec::with_capacity(ids.len());
        for id in ids {
            jobs.push(
                engine
                    .store
                    .job(*id)
                    .await?
                    .ok_or(AuditError::NotFound(*id))?,
            );
        }
        jobs
    };
    let incidents = engine.store.incidents().await?;
    let mut histories: HashMap<JobId, Vec<BlobWrite>> = HashMap::new();
    let mut audits = Vec::with_capacity(jobs.len());
    for job in jobs {
        audits.push(audit_job(engine, job, &incidents, &mut histories).await?);
    }
    Ok(audits)
}

/// Audits one job. `histories` caches the blob writes of the jobs read so far (other jobs'
/// histories are read for the blobs this job wrote, found through the blob index). A history is
/// its compacted summary and the events still held, read as one.
pub async fn audit_job(
    engine: &Engine,
    job: Job,
    incidents: &[Incident],
    histories: &mut HashMap<JobId, Vec<BlobWrite>>,
) -> Result<JobAudit, AuditError> {
    let summary = engine.store.event_summary(job.id).await?;
    let events = engine.store.events(job.id).await?;
    let checkpoints = engine.store.checkpoints(job.id).await?;
    let folded = history::fold_all(job.id, summary.as_ref(), &events);
    let own_writes = folded_blob_writes(&folded);

    // Other jobs that wrote the same blobs are the ones the index says reference them.
    let mut other_writes = Vec::new();
    let mut others_read = HashSet::new();
    for write in &own_writes {
        for other in engine.store.jobs_referencing(&write.key).await? {
            if other == job.id || !others_read.insert(other) {
                continue;
            }
            if let std::collections::hash_map::Entry::Vacant(slot) = histories.entry(other) {
                let other_summary = engine.store.event_summary(other).await?;
                let other_events = engine.store.events(other).await?;
                slot.insert(blob_writes(other, other_summary.as_ref(), &other_events));
            }
            other_writes.extend(histories[&other].iter().cloned());
        }
    }
    let analysis = evaluate(&folded, &other_writes, incidents);
    histories.insert(job.id, own_writes);

    let mut steps: Vec<StepAudit> = Vec::new();
    let workflow_steps: Vec<String> = engine
        .workflows
        .get(&job.workflow)
        .map(|workflow| {
            workflow
                .steps
                .iter()
                .map(|step| step.kind().name().to_string())
                .collect()
        })
        .unwrap_or_default();
    let history_steps = analysis.steps.iter().map(|(step, _)| step.clone());
    for step in workflow_steps.into_iter().chain(history_steps) {
        if steps.iter().any(|audit| audit.step == step) {
            continue;
        }
        let counts = analysis
            .steps
            .iter()
            .find(|(name, _)| *name == step)
            .map(|(_, counts)| counts.clone())
            .unwrap_or_default();
        let checkpoint = checkpoints
            .iter()
            .find(|checkpoint| checkpoint.step == step)
            .cloned();
        steps.push(StepAudit {
            step,
            counts,
            checkpoint,
        });
    }

    let mut findings = analysis.findings;
    let storage = verify_job(engine, job.id, &checkpoints, false).await;
    for problem in storage.problems() {
        let severity = if job.status == Status::Succeeded {
            Severity::Violation
        } else {
            Severity::Warning
        };
        let key = match &problem.location {
            Location::Object(key) => Some(key.clone()),
            _ => None,
        };
        let message = problem.message();
        findings.push(Finding::of_store(
            "storage_disagrees",
            severity,
            key,
            message,
        ));
    }
    if let Some(store_checkpoint) = checkpoints
        .iter()
        .find(|checkpoint| checkpoint.step == "store")
    {
        findings.extend(check_manifest(engine, store_checkpoint).await);
        for output in &store_checkpoint.outputs {
            let Location::Object(key) = &output.location else {
                continue;
            };
            if key.starts_with(BLOB_PREFIX)
                && !engine.store.jobs_referencing(key).await?.contains(&job.id)
            {
                let message = format!(
                    "the blob index does not list this job for {key}, which its store checkpoint names"
                );
                let key = Some(key.clone());
                findings.push(Finding::of_store(
                    "index_disagrees",
                    Severity::Violation,
                    key,
                    message,
                ));
            }
        }
    }
    findings.sort_by(|left, right| {
        right
            .severity
            .cmp(&left.severity)
            .then(left.seq.cmp(&right.seq))
    });
    Ok(JobAudit {
        job,
        steps,
        writes: analysis.writes,
        storage,
        findings,
    })
}

/// The manifest the store checkpoint names must exist, parse, and name only blobs that exist.
async fn check_manifest(engine: &Engine, store_checkpoint: &Checkpoint) -> Vec<Finding> {
    let Some(Location::Object(manifest_key)) = store_checkpoint
        .output("manifest")
        .map(|output| &output.location)
    else {
        return Vec::new();
    };
    let unreadable = |message: String| {
        let key = Some(manifest_key.clone());
        vec![Finding::of_store(
            "manifest_unreadable",
            Severity::Violation,
            key,
            message,
        )]
    };
    let bytes = match engine.storage.read_bytes(manifest_key).await {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return unreadable(format!("the manifest {manifest_key} is missing")),
        Err(error) => return unreadable(format!("the manifest cannot be read: {error}")),
    };
    let keys = match manifest_blob_keys(&bytes) {
        Some(keys) => keys,
        None => return unreadable(format!("{manifest_key} is not a narra manifest")),
    };
    let mut findings = Vec::new();
    for key in keys {
        match engine.storage.stat(&key).await {
            Ok(Some(_)) => {}
            Ok(None) => findings.push(Finding::of_store(
                "manifest_names_missing_blob",
                Severity::Violation,
                Some(key.clone()),
                format!("the manifest {manifest_key} names {key}, which does not exist"),
            )),
            Err(error) => findings.push(Finding::of_store(
                "manifest_names_missing_blob",
                Severity::Warning,
                Some(key.clone()),
                format!("cannot check {key}, named by {manifest_key}: {error}"),
            )),
        }
    }
    findings
}

/// The blob keys a manifest names (`artifacts[].key`), or `None` when the bytes are not one.
pub fn manifest_blob_keys(bytes: &[u8]) -> Option<Vec<String>> {
    let manifest: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    manifest["artifacts"]
        .as_array()?
        .iter()
        .map(|artifact| artifact["key"].as_str().map(str::to_string))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::job::{ErrorInfo, Hash, Timestamp};

    #[test]
    fn manifest_blob_keys_reads_the_artifacts() {
        let manifest = br#"{"artifacts": [{"kind": "video", "key": "blobs/aa/a.mp4"}, {"kind": "audio", "key": "blobs/bb/b.m4a"}]}"#;
        assert_eq!(
            manifest_blob_keys(manifest),
            Some(vec![
                "blobs/aa/a.mp4".to_string(),
                "blobs/bb/b.m4a".to_string()
            ])
        );
        assert_eq!(manifest_blob_keys(b"not json"), None);
        assert_eq!(
            manifest_blob_keys(br#"{"artifacts": [{"kind": "x"}]}"#),
            None
        );
    }

    /// A worker's writes to one claimed job of a real store.
    struct Run<'a> {
        store: &'a crate::store::SledStore,
        token: crate::model::job::LeaseToken,
    }

    impl Run<'_> {
        async fn claim(store: &crate::store::SledStore, id: JobId) -> Run<'_> {
            use crate::store::OrchestratorStore;
            let worker = crate::model::job::WorkerId("audit:1:1".into());
            let (_, token) = store
                .claim(id, &worker, 60_000)
                .await
                .expect("claim")
                .expect("a pending job");
            Run { store, token }
        }

        /// The job, succeeded, reingested and claimed again.
        async fn again(store: &crate::store::SledStore, id: JobId) -> Run<'_> {
            use crate::store::OrchestratorStore;
            store
                .reingest(id)
                .await
                .expect("reingest")
                .expect("succeeded");
            Run::claim(store, id).await
        }

        async fn event(&self, step: &str, event: crate::store::StepEvent) -> &Self {
            use crate::store::WorkerStore;
            self.store
                .record_step_event(&self.token, step, event)
                .await
                .expect("step event")
                .expect("current token");
            self
        }

        async fn start(&self, step: &str) -> &Self {
            self.event(step, crate::store::StepEvent::Started).await
        }

        /// The step starts and records its checkpoint.
        async fn step(&self, step: &str, input: u8, outputs: &[(&str, &str, u8)]) -> &Self {
            self.start(step)
                .await
                .checkpoint(step, input, outputs)
                .await
        }

        async fn skip(&self, step: &str) -> &Self {
            let skipped = crate::store::StepEvent::Skipped {
                reason: "checkpoint verified".into(),
            };
            self.event(step, skipped).await
        }

        async fn redo(&self, step: &str, cause: &str) -> &Self {
            let redone = crate::store::StepEvent::Redone {
                cause: cause.into(),
                reason: cause.into(),
            };
            self.event(step, redone).await
        }

        async fn wrote(&self, keys: &[&str]) -> &Self {
            let written = crate::store::StepEvent::ObjectsWritten {
                keys: keys.iter().map(|key| key.to_string()).collect(),
            };
            self.event("store", written).await
        }

        async fn checkpoint(&self, step: &str, input: u8, outputs: &[(&str, &str, u8)]) -> &Self {
            use crate::store::WorkerStore;
            let checkpoint = Checkpoint {
                step: step.into(),
                definition_hash: Hash([u8::try_from(step.len()).expect("short"); 32]),
                input_hash: Hash([input; 32]),
                outputs: outputs
                    .iter()
                    .map(|(name, key, byte)| crate::model::job::StepOutput {
                        name: (*name).into(),
                        location: Location::Object((*key).into()),
                        size: 1,
                        blake3: Hash([*byte; 32]),
                        change_token: crate::model::job::ChangeToken::None,
                    })
                    .collect(),
                recorded_at: Timestamp::now(),
            };
            self.store
                .record_checkpoint(&self.token, &checkpoint, None)
                .await
                .expect("record_checkpoint")
                .expect("current token");
            self
        }

        async fn complete(&self) {
            use crate::store::OrchestratorStore;
            self.store
                .complete(&self.token)
                .await
                .expect("complete")
                .expect("current token");
        }

        async fn fail(&self) {
            use crate::store::OrchestratorStore;
            let error = ErrorInfo {
                class: "network_error".into(),
                message: "gone".into(),
            };
            self.store
                .fail(&self.token, error)
                .await
                .expect("fail")
                .expect("current token");
        }
    }

    const VIDEO: &str = "blobs/aa/video.mp4";
    const AUDIO: &str = "blobs/bb/audio.m4a";

    // Guards item 9's promise to `audit`: once a job's history outgrows the bound, its oldest
    // events (here, those holding a non-deterministic extraction, a repair write and a re-run with
    // no cause) are folded into its summary, and the audit of that job, and of another job whose
    // write is judged against its writes, is exactly what it was over the whole history.
    #[tokio::test]
    async fn an_audit_is_the_same_before_and_after_compaction() {
        use crate::store::{JobReader, OrchestratorStore};
        let home = tempfile::tempdir().expect("tempdir");
        let store = std::sync::Arc::new(
            crate::store::SledStore::open(&home.path().join("state"), 8 * 1024 * 1024)
                .expect("open"),
        );
        let engine = Engine::new(
            store.clone(),
            crate::storage::Storage::from_uri("memory://").expect("memory storage"),
            crate::workflow::WorkflowRegistry::builtin(),
            home.path(),
            crate::steps::net::NetworkPolicy::default(),
        );
        let submit = |key: &str| crate::store::SubmitRequest {
            key: key.into(),
            source: format!("https://example.com/{key}.mp4"),
            workflow: "ingest".into(),
            reingest: false,
            priority: crate::model::job::PRIORITY_LIVE,
        };
        let a = store.submit(&submit("a")).await.expect("submit").job.id;
        let b = store.submit(&submit("b")).await.expect("submit").job.id;
        let stored = [("video", VIDEO, 10), ("audio", AUDIO, 20)];

        let run = Run::claim(&store, a).await;
        run.step("download", 1, &[("video", VIDEO, 10)]).await;
        run.step("extract", 2, &[("audio", AUDIO, 20)]).await;
        run.start("store")
            .await
            .wrote(&[VIDEO, AUDIO, "jobs/a/manifest.json"])
            .await;
        run.checkpoint("store", 3, &stored).await.complete().await;
        // Another run extracts other audio from the same input, and repairs the video.
        let run = Run::again(&store, a).await;
        run.skip("download")
            .await
            .redo("extract", "output_changed")
            .await;
        run.step("extract", 2, &[("audio", AUDIO, 29)]).await;
        run.redo("store", "earlier_step_ran")
            .await
            .start("store")
            .await;
        run.wrote(&[VIDEO])
            .await
            .checkpoint("store", 3, &stored)
            .await
            .complete()
            .await;
        // A download that runs again for no recorded cause.
        let run = Run::again(&store, a).await;
        run.step("download", 1, &[("video", VIDEO, 10)]).await;
        run.skip("extract")
            .await
            .skip("store")
            .await
            .complete()
            .await;
        // Then a long, clean tail of runs that skip everything, and a failure.
        for _ in 0..12 {
            let run = Run::again(&store, a).await;
            run.skip("download")
                .await
                .skip("extract")
                .await
                .skip("store")
                .await;
            run.complete().await;
        }
        Run::again(&store, a).await.fail().await;
        // Job b writes the audio a had written, with nothing showing it missing.
        let run = Run::claim(&store, b).await;
        run.start("store").await.wrote(&[AUDIO]).await;
        run.checkpoint("store", 4, &[("audio", AUDIO, 20)])
            .await
            .complete()
            .await;

        assert_eq!(store.event_summary(a).await.expect("summary"), None);
        let before = audit_jobs(&engine, &[a, b]).await.expect("audit");
        let kinds = |audit: &JobAudit| -> Vec<&'static str> {
            audit.findings.iter().map(|finding| finding.kind).collect()
        };
        for kind in ["outputs_differ", "object_restored", "rerun_without_cause"] {
            assert!(
                kinds(&before[0]).contains(&kind),
                "{:?}",
                before[0].findings
            );
        }
        assert!(
            kinds(&before[1]).contains(&"object_rewritten"),
            "{:?}",
            before[1].findings
        );
        let last_finding_seq = before[0]
            .findings
            .iter()
            .filter_map(|finding| finding.seq)
            .max()
            .expect("findings about events");

        // Lower the bound; the next append (a cancel of the failed job) compacts the history.
        store.set_events_max(10);
        store
            .cancel(a)
            .await
            .expect("cancel")
            .expect("a failed job");
        let summary = store
            .event_summary(a)
            .await
            .expect("summary")
            .expect("compacted");
        assert!(
            summary.events_compacted > last_finding_seq,
            "every event a finding is about was compacted: {} <= {last_finding_seq}",
            summary.events_compacted
        );
        assert!(store.events(a).await.expect("events").len() <= 10);
        store.check_consistency().expect("consistent");

        let after = audit_jobs(&engine, &[a, b]).await.expect("audit");
        for (before, after) in before.iter().zip(&after) {
            assert_eq!(after.steps, before.steps);
            assert_eq!(after.writes, before.writes);
            assert_eq!(after.storage, before.storage);
            assert_eq!(after.findings, before.findings);
        }
    }
}
