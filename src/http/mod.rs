//! HTTP surfaces. Each feature module returns its own router, merged in [`crate::app`].

pub mod api;
pub mod audit;
pub mod caller;
pub mod checkpoint;
pub mod console;
pub mod error;
pub mod keys;
pub mod listener;
pub mod logs;
pub mod me;
pub mod metrics;
pub mod ops;
pub mod panic;
pub mod providers;
pub mod proxy;
pub mod request_id;
pub mod schema;
pub mod state;
pub mod users;
