//! The SQLite event store.
