//! Integration tests: one binary, one module per feature.

// Test helpers outside #[test] functions may fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod api;
mod archive;
mod asof;
mod audit;
mod auditor;
mod checkpoint;
mod cli;
mod clouds;
mod common;
mod crash;
mod faults;
mod foundation;
mod keys;
mod matrix;
mod merkle;
mod mock_provider;
mod nodes;
mod openapi;
mod ops;
mod pg;
mod providers;
mod proxy;
mod readme;
mod sdk;
mod security;
mod skip;
mod snapshot;
mod store;
mod ui;
mod users;
mod verify_export;
