//! Integration tests: one binary, one module per feature.

// Test helpers outside #[test] functions may fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod api;
mod cli;
mod common;
mod foundation;
mod keys;
mod nodes;
mod openapi;
mod pg;
mod store;
