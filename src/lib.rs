//! Keyward: an event-sourced API key service and LLM gateway.
//!
//! Layers, each using only the ones below it: `http` → `commands` / `auth` → `live` →
//! `store` and the pure `keyward_projections` → `keyward_events`, `config`, `crypto`.

pub mod archive;
pub mod audit;
pub mod auth;
pub mod background;
pub mod bootstrap;
pub mod checkpoint;
pub mod cli;
pub mod commands;
pub mod config;
pub mod crypto;
pub mod history;
pub mod http;
pub mod live;
pub mod metrics;
pub mod mock_provider;
pub mod names;
pub mod net;
pub mod notify;
pub mod providers;
pub mod redact;
pub mod server;
pub mod snapshot;
pub mod store;
pub mod sweeper;
pub mod tail;
pub mod timeline;
pub mod ui;

/// The allocator the service runs with: `main` installs it as the global allocator, and
/// the benchmarks and load examples do too, so that they measure what runs.
///
/// mimalloc rather than glibc's malloc: the append path allocates and frees a few dozen
/// small blocks per event across threads (the proxy's request task builds an event, the
/// appender seals it, SQLite's worker binds it, the sink folds it), and glibc spent ~30%
/// of that path's instructions in `_int_malloc`/`_int_free`/`malloc_consolidate` and its
/// arena locks (BENCHMARKS.md, "What changed for speed").
///
/// With the default feature `c-malloc`, mimalloc also replaces the C `malloc` in every
/// binary that links this crate, so SQLite's page cache and statements use it too.
pub type Allocator = mimalloc::MiMalloc;

/// The one value of [`Allocator`], for `#[global_allocator] static A: Allocator = ALLOCATOR;`.
pub const ALLOCATOR: Allocator = mimalloc::MiMalloc;

pub mod time {
    pub use keyward_events::time::*;
}

use axum::Router;

/// The state every handler takes, defined in `http` (re-exported here, where it was).
pub use http::state::{App, AppState};

/// The whole HTTP application. Tests call this directly.
pub fn app(state: AppState) -> Router {
    layered(
        Router::new()
            .merge(http::ops::router())
            .merge(http::api::router())
            .merge(http::proxy::router())
            .nest("/ui", ui::router()),
    )
    .with_state(state)
}

/// The layers every route runs in: the request id and its span (outermost), then the
/// catch for a handler's panic.
pub fn layered(routes: Router<AppState>) -> Router<AppState> {
    routes
        .layer(axum::middleware::from_fn(http::panic::layer))
        .layer(axum::middleware::from_fn(http::request_id::layer))
}
