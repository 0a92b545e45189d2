//! The domain, pure: what a job is and every decision about it, with no I/O.
//!
//! The job model (`job`), the status/phase transitions (`machine`), whom a process's death is
//! charged to (`attribution`), the scheduling rules (`scheduling`), the fold of a job's history
//! (`history`), what a source is and its host (`sources`), the stable error classes (`errors`) and
//! the secrets kept out of what people read (`redact`). Then the reports the engine computes, as
//! plain data with the rules that are pure: health (`health`), stuck jobs (`stuck`), verification
//! (`verification`), the idempotency audit (`audit`), cleanup and takedown plans (`cleanup`),
//! prunes (`prune`) and backfill summaries (`backfill`). Every other layer builds on this one; it
//! imports no other module of the crate, and no crate that does I/O (no tokio, database, HTTP or
//! object store): a test in `tests/suite/layering.rs` keeps it so.

pub mod attribution;
pub mod audit;
pub mod backfill;
pub mod cleanup;
pub mod errors;
#[cfg(test)]
pub mod fixtures;
pub mod health;
pub mod history;
pub mod job;
pub mod machine;
pub mod prune;
pub mod redact;
pub mod scheduling;
pub mod sources;
pub mod stuck;
pub mod verification;

pub use errors::ErrorClass;
