//! narra's integration tests: one binary, themed modules under `tests/suite/`, one fixture.
//!
//! Every test runs the real `narra` binary against a temporary home, with real ffmpeg and a
//! loopback HTTP origin that logs every request it serves.

mod suite;
