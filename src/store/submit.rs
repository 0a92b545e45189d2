//! What `submit` and `submit_batch` do around a store's transaction, written once for every
//! store: a batch applied in transactions of at most [`SUBMIT_BATCH_MAX`], each at one `now`, and
//! what a refused submission means: a submission body refuses only through a store failure, so
//! a refusal that comes back anyway says a record is not what the body read it as (corrupt).
//!
//! Each store's `submit_in_tx` reads and writes the key's job (`model::submission` decides); this
//! module never opens a transaction, never reads a record and never flushes: the store does.

use std::future::Future;

use super::{SUBMIT_BATCH_MAX, StoreError, StoreResult, SubmitRequest, Submitted};
use crate::model::job::Timestamp;
use crate::model::machine::Rejected;

/// `submit`'s outcome of `request` from the store's one transaction.
pub(crate) fn one(
    outcome: Result<Submitted, Rejected>,
    tree: &'static str,
    request: &SubmitRequest,
) -> StoreResult<Submitted> {
    outcome.map_err(|rejected| {
        StoreError::corrupt(
            tree,
            request.key.as_bytes(),
            format!("submit was refused: {rejected}"),
        )
    })
}

/// `submit_batch`'s requests in order, a chunk of at most [`SUBMIT_BATCH_MAX`] at a time: `apply`
/// submits one chunk in one transaction of the store's at the `now` it is given. The outcomes in
/// request order; the caller makes them durable before it acknowledges any.
pub(crate) async fn in_chunks<'r, F, Fut>(
    requests: &'r [SubmitRequest],
    tree: &'static str,
    mut apply: F,
) -> StoreResult<Vec<Submitted>>
where
    F: FnMut(&'r [SubmitRequest], Timestamp) -> Fut,
    Fut: Future<Output = StoreResult<Result<Vec<Submitted>, Rejected>>>,
{
    let mut submitted = Vec::with_capacity(requests.len());
    for chunk in requests.chunks(SUBMIT_BATCH_MAX) {
        let chunk_submitted = apply(chunk, Timestamp::now()).await?.map_err(|rejected| {
            StoreError::corrupt(tree, b"", format!("a batch submit was refused: {rejected}"))
        })?;
        submitted.extend(chunk_submitted);
    }
    Ok(submitted)
}
