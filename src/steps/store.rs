//! The store step: writes the original video, the audio and the metadata record as content-addressed
//! blobs, then the job's manifest, which names them.
//!
//! An object that already exists with the expected size and blake3 is not written again. The
//! blobs and the metadata record are written concurrently (their uploads, or on a filesystem their
//! fsyncs, overlap); the manifest is written last, after every blob it names is durably stored, so
//! a manifest's presence implies complete artifacts. The manifest has no timestamps: rewriting it
//! is byte-identical.
//!
//! Progress: `bytes_total` is the sum of the file blobs' sizes (video, audio, platform metadata),
//! and `bytes_done` the bytes of them handled so far: a blob counts whole once it is stored or found
//! already stored (skipped blobs count as done, so a finished run always ends at its total), and a
//! blob being uploaded counts the bytes sent so far (back to none of it if the upload is retried
//! or fails); blobs uploaded at once each count their own bytes.
//! The metadata record and the manifest, a few KiB written whole, are not counted.

use std::path::PathBuf;
use std::time::Duration;

use tokio::time::Instant;

use super::{ErrorClass, Progress, ProgressSender, StepError};
use crate::model::job::{ChangeToken, Hash, JobId, Location, MediaMetadata, StepOutput};
use crate::storage::{
    ObjectStat, Storage, StorageError, WriteOptions, Written, blob_key, manifest_key,
};

/// A file to store as a blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobInput {
    /// `video` or `audio`.
    pub name: &'static str,
    /// A local copy of the bytes, when one is at hand. `None` is allowed only when the object is
    /// already stored under its key (then there is nothing to upload).
    pub local_path: Option<PathBuf>,
    pub size: u64,
    pub blake3: Hash,
    /// `local_path`'s change token when its blake3 was computed (from the checkpoint that recorded
    /// it), if known: while the file still has it, an `fs://` store links the file into place
    /// instead of copying it (`Storage::put_local_file`).
    pub hashed_at: Option<ChangeToken>,
    pub extension: String,
}

/// What the store step needs.
#[derive(Debug, Clone)]
pub struct StoreInput<'a> {
    pub job_id: JobId,
    pub source: &'a str,
    pub workflow: &'a str,
    pub blobs: Vec<BlobInput>,
    pub metadata: &'a MediaMetadata,
    /// The outputs of this step's previous checkpoint, if any: their change tokens let an unchanged
    /// object be recognised without reading it.
    pub previous_outputs: &'a [StepOutput],
    /// How long an unavailable object store is retried before the step fails.
    pub unavailable_wait: Duration,
}

/// What the store step did.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    /// `video`, `audio`, `metadata`, `manifest`, in that order.
    pub outputs: Vec<StepOutput>,
    pub objects_written: u32,
    pub objects_skipped: u32,
    /// The keys this run wrote (not those it found already holding their bytes), in output order
    /// (the blobs and the metadata record are written at once, the manifest last): the worker
    /// records them for `narra audit`.
    pub keys_written: Vec<String>,
}

/// Stores the blobs, the metadata record and the manifest, reporting the blobs' bytes to
/// `progress` as it goes (see the module's docs for what counts).
pub async fn store(
    storage: &Storage,
    input: &StoreInput<'_>,
    progress: &ProgressSender,
) -> Result<Stored, StepError> {
    let mut outputs = Vec::new();
    let mut objects_written = 0;
    let mut objects_skipped = 0;
    let mut artifacts = Vec::new();
    // Whether each output, in order, had to be written.
    let mut written_flags = Vec::new();
    let mut put = |written: bool| {
        written_flags.push(written);
        if written {
            objects_written += 1;
        } else {
            objects_skipped += 1;
        }
    };

    let bytes_total = input
        .blobs
        .iter()
        .fold(0u64, |total, blob| total.saturating_add(blob.size));
    progress.send_replace(Progress {
        bytes_done: 0,
        bytes_total: Some(bytes_total),
    });
    // The bytes each blob counts for (see the module's docs), summed into `bytes_done`.
    let counted = std::sync::Mutex::new(vec![0u64; input.blobs.len()]);
    let count = |index: usize, bytes: u64| {
        let mut counted = counted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        counted[index] = bytes;
        let done = counted
            .iter()
            .fold(0u64, |done, bytes| done.saturating_add(*bytes));
        progress.send_modify(|progress| progress.bytes_done = done);
    };
    let blob_writes = input.blobs.iter().enumerate().map(|(index, blob)| {
        let count = &count;
        async move {
            let key = blob_key(&blob.blake3, &blob.extension);
            let payload = Payload::File(blob.local_path.clone(), blob.hashed_at.clone());
            let on_sent = |sent: u64| count(index, sent.min(blob.size));
            let ensured = ensure_object(
                storage,
                input,
                &key,
                blob.size,
                blob.blake3,
                &payload,
                &on_sent,
            )
            .await;
            // What was sent of a blob that is not stored does not count.
            count(index, if ensured.is_ok() { blob.size } else { 0 });
            ensured.map(|(stat, written)| (key, stat, written))
        }
    });

    let metadata_bytes = serde_json::to_vec_pretty(&super::extract::metadata_json(input.metadata))
        .expect("JSON values serialize");
    let metadata_hash = Hash::of(&metadata_bytes);
    let metadata_size = metadata_bytes.len() as u64;
    let metadata_key = blob_key(&metadata_hash, "json");
    let metadata_payload = Payload::Bytes(metadata_bytes);
    let metadata_write = ensure_object(
        storage,
        input,
        &metadata_key,
        metadata_size,
        metadata_hash,
        &metadata_payload,
        &|_| {},
    );
    // The blobs and the metadata record are written at once: their writes (and, on a filesystem,
    // their fsyncs) overlap. Each is awaited to its end, so none is left half-done by another's
    // failure; the first failure in output order is the step's.
    let (blob_results, metadata_result) =
        tokio::join!(futures::future::join_all(blob_writes), metadata_write);
    for (blob, result) in input.blobs.iter().zip(blob_results) {
        let (key, stat, written) = result?;
        put(written);
        artifacts.push(serde_json::json!({
            "kind": blob.name, "key": key, "size": blob.size, "blake3": blob.blake3.to_hex(),
        }));
        outputs.push(output(blob.name, key, blob.size, blob.blake3, stat));
    }
    let (stat, written) = metadata_result?;
    put(written);
    artifacts.push(serde_json::json!({
        "kind": "metadata", "key": metadata_key, "size": metadata_size, "blake3": metadata_hash.to_hex(),
    }));
    outputs.push(output(
        "metadata",
        metadata_key,
        metadata_size,
        metadata_hash,
        stat,
    ));

    let mut summary = super::extract::metadata_json(input.metadata);
    if let Some(object) = summary.as_object_mut() {
        object.remove("raw");
    }
    let manifest = serde_json::json!({
        "job_id": input.job_id.to_string(),
        "source": crate::model::redact::redact_url(input.source),
        "workflow": input.workflow,
        "artifacts": artifacts,
        "metadata": summary,
    });
    let manifest_bytes = serde_json::to_vec_pretty(&manifest).expect("JSON values serialize");
    let manifest_hash = Hash::of(&manifest_bytes);
    let manifest_size = manifest_bytes.len() as u64;
    let key = manifest_key(input.job_id);
    let (stat, written) = ensure_object(
        storage,
        input,
        &key,
        manifest_size,
        manifest_hash,
        &Payload::Bytes(manifest_bytes),
        &|_| {},
    )
    .await?;
    put(written);
    outputs.push(output("manifest", key, manifest_size, manifest_hash, stat));

    let keys_written = outputs
        .iter()
        .zip(&written_flags)
        .filter(|(_, written)| **written)
        .filter_map(|(output, _)| match &output.location {
            Location::Object(key) => Some(key.clone()),
            _ => None,
        })
        .collect();
    Ok(Stored {
        outputs,
        objects_written,
        objects_skipped,
        keys_written,
    })
}

enum Payload {
    /// A local file, with its change token when it was hashed.
    File(Option<PathBuf>, Option<ChangeToken>),
    Bytes(Vec<u8>),
}

fn output(name: &str, key: String, size: u64, blake3: Hash, stat: ObjectStat) -> StepOutput {
    StepOutput {
        name: name.to_string(),
        location: Location::Object(key),
        size,
        blake3,
        change_token: stat.change_token,
    }
}

/// Makes sure `key` holds exactly the expected bytes: returns the object's stat and whether it had
/// to be written. Skips by hash, never by ETag: an existing object counts when its recorded blake3
/// (user metadata, where the backend keeps it) matches, when its change token is the one this step
/// recorded last time, or when re-hashing it gives the expected blake3. A file upload reports the
/// bytes sent so far to `on_sent`.
async fn ensure_object(
    storage: &Storage,
    input: &StoreInput<'_>,
    key: &str,
    size: u64,
    blake3: Hash,
    payload: &Payload,
    on_sent: &(dyn Fn(u64) + Sync),
) -> Result<(ObjectStat, bool), StepError> {
    let previous_token = input
        .previous_outputs
        .iter()
        .find(|output| {
            output.location == Location::Object(key.to_string()) && output.blake3 == blake3
        })
        .map(|output| &output.change_token);
    let existing = with_retry(input.unavailable_wait, || storage.stat(key)).await?;
    if let Some(stat) = &existing
        && stat.size == size
    {
        let recorded = stat.recorded_blake3 == Some(blake3);
        let unchanged = previous_token
            .is_some_and(|token| *token != ChangeToken::None && *token == stat.change_token);
        if recorded || unchanged {
            return Ok((stat.clone(), false));
        }
        let found = with_retry(input.unavailable_wait, || storage.hash_object(key)).await?;
        if found == Some((size, blake3)) {
            return Ok((stat.clone(), false));
        }
        tracing::warn!(
            key,
            "a stored object does not match its expected hash; rewriting it"
        );
    }
    // Content-addressed keys are created only if absent, where the backend can: a concurrent
    // writer of the same key writes the same bytes.
    let options = WriteOptions {
        blake3: Some(blake3),
        if_not_exists: existing.is_none() && key.starts_with("blobs/"),
    };
    let is_blob = key.starts_with("blobs/");
    if is_blob {
        crate::failpoint!("store.blob.before");
    } else {
        crate::failpoint!("store.manifest.before");
    }
    let written = match payload {
        Payload::File(Some(path), hashed_at) => {
            with_retry(input.unavailable_wait, || {
                storage.put_local_file(key, path, options, hashed_at.as_ref(), on_sent)
            })
            .await?
        }
        Payload::File(None, _) => {
            return Err(StepError::new(
                ErrorClass::Internal,
                format!("no local copy of {key} to upload"),
            ));
        }
        Payload::Bytes(bytes) => {
            with_retry(input.unavailable_wait, || {
                storage.put_bytes(key, bytes.clone(), options)
            })
            .await?
        }
    };
    if is_blob {
        crate::failpoint!("store.blob.after");
    } else {
        crate::failpoint!("store.manifest.after");
    }
    match written {
        Written::Written(stat) => Ok((stat, true)),
        Written::AlreadyExists => {
            // Another writer created the key between our stat and our write: it counts only if it
            // holds our bytes.
            let found = with_retry(input.unavailable_wait, || storage.hash_object(key)).await?;
            let stat = with_retry(input.unavailable_wait, || storage.stat(key)).await?;
            match (found, stat) {
                (Some(found), Some(stat)) if found == (size, blake3) => Ok((stat, false)),
                _ => Err(StepError::new(
                    ErrorClass::ChecksumMismatch,
                    format!("{key} was created concurrently with different content"),
                )),
            }
        }
    }
}

/// Retries an operation while the object store is unavailable, with exponential backoff, for at
/// most `wait`. Other failures return at once.
async fn with_retry<T, F, Fut>(wait: Duration, mut operation: F) -> Result<T, StepError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StorageError>>,
{
    let started = Instant::now();
    let mut delay = Duration::from_millis(200);
    loop {
        match operation().await {
            Ok(value) => return Ok(value),
            Err(error) if error.retryable() && started.elapsed() + delay <= wait => {
                tracing::warn!(%error, delay_ms = delay.as_millis() as u64, "object store unavailable; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
            Err(error) => return Err(error.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn unavailable() -> StorageError {
        StorageError::Unavailable {
            action: "writing",
            key: "blobs/aa/x.mp4".into(),
            message: "connection refused".into(),
        }
    }

    // Guards that an unavailable object store is retried with backoff, and that the step gives up
    // with `storage_unavailable` once the configured wait is spent.
    #[tokio::test(start_paused = true)]
    async fn unavailable_storage_is_retried_until_the_wait_is_spent() {
        let calls = AtomicU32::new(0);
        let started = tokio::time::Instant::now();
        let result: Result<(), StepError> = with_retry(Duration::from_secs(5), || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(unavailable())
        })
        .await;
        let error = result.unwrap_err();
        assert_eq!(error.class, ErrorClass::StorageUnavailable);
        assert!(calls.load(Ordering::SeqCst) > 2, "retried more than once");
        assert!(
            started.elapsed() <= Duration::from_secs(5),
            "gave up within the wait"
        );
    }

    // Guards that a retried operation's eventual success is returned.
    #[tokio::test(start_paused = true)]
    async fn a_store_that_comes_back_succeeds() {
        let calls = AtomicU32::new(0);
        let result = with_retry(Duration::from_secs(60), || async {
            if calls.fetch_add(1, Ordering::SeqCst) < 3 {
                Err(unavailable())
            } else {
                Ok(7)
            }
        })
        .await;
        assert_eq!(result.unwrap(), 7);
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    fn metadata() -> MediaMetadata {
        MediaMetadata {
            format_name: "mov,mp4,m4a,3gp,3g2,mj2".into(),
            duration_s: Some(1.0),
            size: None,
            bit_rate: None,
            streams: Vec::new(),
            raw: "{}".into(),
        }
    }

    /// A blob of `size` bytes of `fill`, written to a file in `dir`.
    fn blob(dir: &std::path::Path, name: &'static str, size: usize, fill: u8) -> BlobInput {
        let bytes = vec![fill; size];
        let path = dir.join(name);
        std::fs::write(&path, &bytes).unwrap();
        BlobInput {
            name,
            local_path: Some(path),
            size: size as u64,
            blake3: Hash::of(&bytes),
            hashed_at: None,
            extension: "bin".into(),
        }
    }

    // Guards store-step progress: the total is the blobs' bytes, the figures only grow, a finished
    // run ends at the total, and so does a run that found every blob already stored (skipped blobs
    // count as done). `storage`'s tests show that an upload reports after each chunk.
    #[tokio::test]
    async fn store_progress_sums_the_blobs_and_counts_skipped_ones_as_done() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::from_uri("memory://").unwrap();
        let chunk = crate::storage::CHUNK_BYTES;
        let blobs = vec![
            blob(dir.path(), "video", 3 * chunk + 1, 1),
            blob(dir.path(), "audio", chunk / 2, 2),
        ];
        let total = (3 * chunk + 1 + chunk / 2) as u64;
        let metadata = metadata();
        let input = StoreInput {
            job_id: JobId(1),
            source: "/media/clip.mp4",
            workflow: "ingest",
            blobs,
            metadata: &metadata,
            previous_outputs: &[],
            unavailable_wait: Duration::ZERO,
        };
        let (progress, mut receiver) = tokio::sync::watch::channel(Progress::default());
        // Sees the figures whenever the step waits; which ones it sees depends on scheduling.
        let observer = tokio::spawn(async move {
            let mut seen = Vec::new();
            while receiver.changed().await.is_ok() {
                seen.push(*receiver.borrow_and_update());
            }
            seen
        });

        let stored = store(&storage, &input, &progress).await.unwrap();

        assert_eq!(stored.objects_written, 4);
        let done = Progress {
            bytes_done: total,
            bytes_total: Some(total),
        };
        assert_eq!(*progress.borrow(), done);
        drop(progress);
        let seen = observer.await.unwrap();
        assert!(
            seen.iter().all(|seen| seen.bytes_total == Some(total)),
            "{seen:?}"
        );
        assert!(
            seen.windows(2)
                .all(|pair| pair[0].bytes_done <= pair[1].bytes_done),
            "{seen:?}"
        );

        let (again, _) = tokio::sync::watch::channel(Progress::default());
        let stored = store(&storage, &input, &again).await.unwrap();
        assert_eq!(stored.objects_written, 0, "everything was already stored");
        assert_eq!(*again.borrow(), done);
    }

    // Guards the sum across objects: a blob whose upload fails counts for nothing, even when all
    // its bytes were sent before the failure (a local file that changed since its checkpoint), and
    // the blobs stored beside it count whole; a failure leaves no manifest.
    #[tokio::test]
    async fn a_failed_upload_leaves_progress_at_the_blobs_stored_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let video = blob(dir.path(), "video", 1000, 1);
        let audio = blob(dir.path(), "audio", 500, 2);
        let mut missing = audio.clone();
        missing.local_path = Some(dir.path().join("gone"));
        let mut changed = audio.clone();
        changed.local_path = Some(dir.path().join("changed"));
        std::fs::write(dir.path().join("changed"), vec![3u8; 500]).unwrap();
        let metadata = metadata();
        for (failing, class) in [
            (missing, ErrorClass::StorageError),
            (changed, ErrorClass::ChecksumMismatch),
        ] {
            let storage = Storage::from_uri("memory://").unwrap();
            let input = StoreInput {
                job_id: JobId(1),
                source: "/media/clip.mp4",
                workflow: "ingest",
                blobs: vec![video.clone(), failing],
                metadata: &metadata,
                previous_outputs: &[],
                unavailable_wait: Duration::ZERO,
            };
            let (progress, _) = tokio::sync::watch::channel(Progress::default());

            let error = store(&storage, &input, &progress).await.unwrap_err();

            assert_eq!(error.class, class, "{error}");
            assert_eq!(
                *progress.borrow(),
                Progress {
                    bytes_done: 1000,
                    bytes_total: Some(1500),
                },
                "{class}"
            );
            // The blobs are written at once: the video, whose write did not fail, is stored
            // whole; the manifest, written only after every blob, is not.
            let video_key = blob_key(&video.blake3, &video.extension);
            let stored = storage.stat(&video_key).await.unwrap();
            assert_eq!(stored.map(|stat| stat.size), Some(1000), "{class}");
            let manifest = storage.stat(&manifest_key(JobId(1))).await.unwrap();
            assert!(manifest.is_none(), "{class}: no manifest after a failure");
        }
    }

    // Guards that a local storage error fails at once, without retries.
    #[tokio::test(start_paused = true)]
    async fn storage_errors_are_not_retried() {
        let calls = AtomicU32::new(0);
        let result: Result<(), StepError> = with_retry(Duration::from_secs(60), || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(StorageError::Failed {
                action: "writing",
                key: "k".into(),
                message: "Not a directory".into(),
            })
        })
        .await;
        assert_eq!(result.unwrap_err().class, ErrorClass::StorageError);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
