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

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;

use crate::commands::Commands;
use crate::config::Config;
use crate::crypto::Keyring;
use crate::http::proxy::Proxy;
use crate::live::Live;
use crate::store::EventStore;

/// Everything a request may need. Cloned per request: one `Arc`.
#[derive(Clone)]
pub struct AppState(pub Arc<App>);

pub struct App {
    pub config: Config,
    pub store: Arc<dyn EventStore>,
    pub live: Arc<Live>,
    pub commands: Commands,
    pub keyring: Keyring,
    pub proxy: Proxy,
    /// The web console's sessions and sign-in throttles.
    pub console: ui::Console,
    /// `?as_of=` replays running at once: each folds the log from seq 1.
    pub replays: tokio::sync::Semaphore,
    /// The key that signs audit checkpoints, when there is one (`crate::checkpoint`).
    pub checkpoint_key: Option<Arc<checkpoint::CheckpointKey>>,
    ready: AtomicBool,
}

impl App {
    pub fn new(
        config: Config,
        store: Arc<dyn EventStore>,
        live: Arc<Live>,
        commands: Commands,
        keyring: Keyring,
        proxy: Proxy,
    ) -> App {
        App {
            console: ui::Console::new(&config),
            replays: tokio::sync::Semaphore::new(http::keys::REPLAYS_AT_ONCE),
            config,
            store,
            live,
            commands,
            keyring,
            proxy,
            checkpoint_key: None,
            ready: AtomicBool::new(false),
        }
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }
}

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
