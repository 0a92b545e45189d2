//! What `show` displays of one job, read in one place for every door: `narra show` and
//! `GET /jobs/{id}` both call [`records`] and format its answer with `views::job`.
//!
//! Reads only. The metadata record is shown as the extract step shapes it
//! (`steps::extract::metadata_json`), the shape its stored manifest holds too.

use crate::engine::Engine;
use crate::model::job::JobId;
use crate::store::StoreError;
use crate::views::job::ShowRecords;

/// The job and everything `show` displays of it, or `None` when there is no such job.
pub async fn records(engine: &Engine, id: JobId) -> Result<Option<ShowRecords>, StoreError> {
    let Some(job) = engine.store.job(id).await? else {
        return Ok(None);
    };
    let checkpoints = engine.store.checkpoints(id).await?;
    let metadata = engine.store.metadata(id).await?;
    let summary = engine.store.event_summary(id).await?;
    let events = engine.store.events(id).await?;
    let progress = engine.store.progress(id).await?;
    let webhook = engine.store.webhook(id).await?;
    Ok(Some(ShowRecords {
        job,
        checkpoints,
        metadata: metadata.as_ref().map(crate::steps::extract::metadata_json),
        summary,
        events,
        progress,
        webhook,
    }))
}
