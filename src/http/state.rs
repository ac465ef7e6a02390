//! What every handler is given: [`AppState`], one `Arc` of the [`App`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

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
    pub console: crate::http::console::Console,
    /// `?as_of=` replays running at once: each folds the log from seq 1.
    pub replays: tokio::sync::Semaphore,
    /// The key that signs audit checkpoints, when there is one (`crate::checkpoint`).
    pub checkpoint_key: Option<Arc<crate::checkpoint::CheckpointKey>>,
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
            console: crate::http::console::Console::new(&config),
            replays: tokio::sync::Semaphore::new(crate::http::keys::REPLAYS_AT_ONCE),
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
