//! narra: a durable workflow engine for video ingestion.
//!
//! Every ingestion job is a persisted workflow of checkpointed steps (download -> extract -> store).
//! The binary in `main.rs` is a thin shell over this library: the CLI, the tests and the
//! HTTP API all call the same functions. See `docs/ARCHITECTURE.md` for the map.

pub mod api;
pub mod cli;
pub mod engine;
pub mod failpoint;
pub mod logging;
pub mod model;
pub mod private_files;
pub mod steps;
pub mod storage;
pub mod store;
pub mod views;
pub mod wire;
pub mod workflow;
