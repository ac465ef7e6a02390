//! The tail: keeps this node's live projections current with what other nodes append to
//! a shared PostgreSQL log.
//!
//! A notification on `keyward_events` wakes it at once; a poll every second covers
//! notifications that never arrive (a dropped connection, a proxy that does not pass them
//! on). Either way it calls [`Live::catch_up`], which reads every event beyond the live
//! head in seq order and folds them strictly one after another, so a missed or repeated
//! wake-up costs one query and never an event. After the database restarts the tail
//! subscribes again, with backoff, and its first catch-up resumes from the live head:
//! the last seq this node applied.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::live::Live;
use crate::store::StoreError;
use crate::store::postgres::{PostgresStore, Wakeups};

pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

pub struct TailHandle {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl TailHandle {
    pub async fn shutdown(self) {
        self.stop.cancel();
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "the tail task failed");
        }
    }
}

pub fn spawn(store: Arc<PostgresStore>, live: Arc<Live>) -> TailHandle {
    let stop = CancellationToken::new();
    let task = Tail {
        store,
        live,
        stop: stop.clone(),
        failing: false,
    };
    TailHandle {
        stop,
        task: tokio::spawn(task.run()),
    }
}

struct Tail {
    store: Arc<PostgresStore>,
    live: Arc<Live>,
    stop: CancellationToken,
    /// Whether the last catch-up failed, so that an outage is logged once, not every second.
    failing: bool,
}

impl Tail {
    async fn run(mut self) {
        let mut wakeups: Option<Wakeups> = None;
        // A subscription under way. It runs alongside the poll rather than before it: with
        // the database down or out of connections, it can take seconds to fail.
        let mut subscribing: Option<Subscribing> = None;
        let mut backoff = BACKOFF_START;
        let mut subscribe_at = Instant::now();
        let mut subscribed_before = false;
        let mut poll = tokio::time::interval(POLL_INTERVAL);
        poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            if wakeups.is_none() && subscribing.is_none() && Instant::now() >= subscribe_at {
                let store = self.store.clone();
                subscribing = Some(Box::pin(async move { store.listen().await }));
            }
            let idle = wakeups.is_none() && subscribing.is_none();
            tokio::select! {
                () = self.stop.cancelled() => return,
                listened = finish(&mut subscribing) => {
                    subscribing = None;
                    match listened {
                        Ok(w) => {
                            wakeups = Some(w);
                            backoff = BACKOFF_START;
                            self.live.tail_stats().set_listening(true);
                            if subscribed_before {
                                self.live.tail_stats().count_reconnect();
                                tracing::info!("listening for new events again");
                            }
                            subscribed_before = true;
                            // Whatever committed while nobody listened.
                            self.catch_up().await;
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, retry_in_ms = backoff.as_millis() as u64, "cannot listen for new events; polling meanwhile");
                            subscribe_at = Instant::now() + backoff;
                            backoff = (backoff * 2).min(BACKOFF_MAX);
                        }
                    }
                }
                woke = next(&mut wakeups) => match woke {
                    Ok(_) => self.catch_up().await,
                    Err(e) => {
                        tracing::warn!(error = %e, "stopped listening for new events; reconnecting, polling meanwhile");
                        wakeups = None;
                        self.live.tail_stats().set_listening(false);
                        subscribe_at = Instant::now() + backoff;
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                    }
                },
                _ = poll.tick() => self.catch_up().await,
                () = tokio::time::sleep_until(subscribe_at), if idle => {}
            }
        }
    }

    async fn catch_up(&mut self) {
        // Cancelled at an await, a catch-up has folded whole events or none: safe to drop.
        let caught_up = tokio::select! {
            () = self.stop.cancelled() => return,
            caught_up = self.live.catch_up() => caught_up,
        };
        match caught_up {
            Ok(_) => {
                if std::mem::take(&mut self.failing) {
                    tracing::info!(
                        head_seq = self.live.head().seq,
                        "caught up with the log again"
                    );
                }
            }
            Err(e) => {
                if !std::mem::replace(&mut self.failing, true) {
                    tracing::warn!(error = %e, "cannot read new events; this node's view may be stale until it can");
                }
            }
        }
    }
}

type Subscribing = Pin<Box<dyn Future<Output = Result<Wakeups, StoreError>> + Send>>;

/// The outcome of the subscription under way, or never when there is none.
async fn finish(subscribing: &mut Option<Subscribing>) -> Result<Wakeups, StoreError> {
    match subscribing {
        Some(s) => s.await,
        None => std::future::pending().await,
    }
}

/// The next wake-up, or never when not subscribed.
async fn next(wakeups: &mut Option<Wakeups>) -> Result<Option<u64>, StoreError> {
    match wakeups {
        Some(w) => w.recv().await,
        None => std::future::pending().await,
    }
}
