//! The domain, pure: what a job is and every decision about it, with no I/O.
//!
//! The job model (`job`), the status/phase transitions (`machine`), whom a process's death is
//! charged to (`attribution`), the scheduling rules (`scheduling`) and the claim walk that applies
//! them (`claims`), what a submission by key does (`submission`), what a job's other records hold
//! (`records`: checkpoint events, blob references, event numbering and compaction, tombstones),
//! webhook notices (`notices`), the rules a store's records obey together (`consistency`), the
//! fold of a job's history (`history`), what a source is and its host (`sources`), the stable
//! error classes (`errors`) and the secrets kept out of what people read (`redact`). The state
//! stores read and write; every decision about what they write is made here, once.
//!
//! Every other layer builds on this one; it imports no other module of the crate, and no crate
//! that does I/O (no tokio, database, HTTP or object store): a test in `tests/suite/layering.rs`
//! keeps it so.
//!
//! The reports the engine computes are here too, as plain data with the rules that are pure:
//! health (`health`), stuck jobs (`stuck`), verification (`verification`), the idempotency audit
//! (`audit`), cleanup and takedown plans (`cleanup`), prunes (`prune`) and backfill summaries
//! (`backfill`), so the views can shape them.

pub mod attribution;
pub mod audit;
pub mod backfill;
pub mod claims;
pub mod cleanup;
pub mod consistency;
pub mod errors;
#[cfg(test)]
pub mod fixtures;
pub mod health;
pub mod history;
pub mod job;
pub mod machine;
pub mod notices;
pub mod prune;
pub mod records;
pub mod redact;
pub mod scheduling;
pub mod sources;
pub mod stuck;
pub mod submission;
pub mod verification;

pub use errors::ErrorClass;
