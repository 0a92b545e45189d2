//! The shapes of jobs and reports that people and programs see, in one place for every door: the
//! JSON of `--json`, of the HTTP API and of the webhook notices, and the lines of text the CLI
//! prints. The CLI writes these to stdout, the API answers with them, the webhook notifier sends
//! them; none of them builds a shape of its own.
//!
//! A view is a typed struct (`#[derive(Serialize)]`) that borrows the model values it shows, so a
//! schema can be derived from it; its JSON is the documented contract, and the golden tests
//! (`golden.rs`, with the expected outputs in `golden/`) hold it to what narra has always printed.
//! Secrets in sources, keys and callback URLs are redacted here (`model::redact`).
//!
//! Views import only `crate::model`: they never read a store, call the engine or write output.

pub mod audit;
pub mod backfill;
pub mod cleanup;
pub mod health;
pub mod history;
pub mod incidents;
pub mod job;
pub mod prune;
pub mod stuck;
pub mod verify;
pub mod webhook;

#[cfg(test)]
mod golden;

use std::fmt;

use serde::{Serialize, Serializer};
use serde_json::Value;

use crate::model::job::{JobId, Timestamp};

/// A value shown as its text (`Display`): ids, hashes, locations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Text<T>(pub T);

impl<T: fmt::Display> Serialize for Text<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

/// Job ids, each as its text.
pub fn ids(ids: &[JobId]) -> Vec<Text<JobId>> {
    ids.iter().copied().map(Text).collect()
}

/// A time shown as RFC 3339 in UTC, to the millisecond (`Timestamp::to_rfc3339`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rfc3339(pub Timestamp);

impl Serialize for Rfc3339 {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0.to_rfc3339())
    }
}

/// A view as narra prints and answers it: a JSON value, whose object keys are sorted, so what
/// users see does not depend on the order a view declares its fields in.
pub fn to_json(view: &impl Serialize) -> Value {
    serde_json::to_value(view).expect("a view serializes to JSON")
}
