//! The themed scenario modules and the fixture they share.

mod fixture;

mod api;
mod azblob;
mod backfill;
mod bad_input;
mod browser;
mod cancel;
mod crash;
mod downloads;
mod e2e;
mod extract;
mod faults;
mod fleet;
mod full_home;
mod health;
mod idempotency;
mod ipc;
mod lock;
mod logs;
mod maintenance;
mod phases;
mod postgres;
mod private_home;
mod progress;
mod resume;
mod s3;
mod scheduling;
mod shutdown;
mod soak;
mod state_growth;
mod stuck;
mod tamper;
mod transfer;
mod webhooks;
mod worker;
