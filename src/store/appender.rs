//! The single appender task: group-commits batches from a bounded queue.
//!
//! Management commands and usage events share one queue, so the log's order is the order
//! in which they were accepted. A management command waits for its own commit and gets
//! its envelopes or its error. A usage event waits only for room in the queue, and once
//! accepted it is never dropped: if the store fails, the appender keeps it and tries
//! again, and while it does the queue fills and the proxy path waits (fail closed).
//!
//! Under `--usage-durability durable` a usage event also carries a [`Durable`] handle:
//! the batch that commits it releases it, all of the batch's handles at once, right after
//! the store acknowledged the commit; a failed batch releases them as not recorded (its
//! events are kept and tried again, but their requests do not wait for that).

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use keyward_events::{Envelope, NewEvent};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{AppendError, EventStore, StoreError, Unwritten};
use crate::metrics::AppenderStats;

/// Receives every batch the appender commits.
#[async_trait]
pub trait CommitSink: Send + Sync + 'static {
    /// Called with the envelopes a batch newly committed, in seq order, before any
    /// submitter of that batch gets its reply, so a command's response reflects its own
    /// write. Seqs are increasing across calls but need not be contiguous: another writer
    /// (another node, or a direct `EventStore::append`) may have appended in between.
    /// It runs while the next batch is appended, and must not wait on the appender
    /// (submit or record), which would wait on it in turn.
    async fn committed(&self, envs: &[Envelope]);
}

#[derive(Clone, Copy, Debug)]
pub struct AppenderConfig {
    /// Queued items (a management unit or one usage event) before `record` waits.
    pub queue_capacity: usize,
    /// Events per batch, at most; a single unit larger than this still goes in one batch.
    pub max_batch: usize,
}

impl Default for AppenderConfig {
    fn default() -> Self {
        AppenderConfig {
            queue_capacity: 65_536,
            max_batch: 1024,
        }
    }
}

const BACKOFF_START: Duration = Duration::from_millis(100);
/// How long a management command waits to be taken into a batch (for room in a full
/// queue, then for the appender, which holds failed usage events while the store is
/// down) before it gets 503. It is then withdrawn: refused with nothing written rather
/// than held until the store comes back. Once in a batch it waits for that batch.
const SUBMIT_WAIT: Duration = Duration::from_secs(5);

/// A management unit's progress, so that a submitter that gave up and the appender agree
/// on whether it will be written.
const QUEUED: u8 = 0;
const TAKEN: u8 = 1;
const WITHDRAWN: u8 = 2;
const BACKOFF_MAX: Duration = Duration::from_secs(2);

enum Item {
    Unit {
        events: Vec<NewEvent>,
        reply: Reply,
        progress: Arc<AtomicU8>,
    },
    /// A usage event, and under `durable` whom to tell once it is committed.
    Usage(NewEvent, Option<oneshot::Sender<()>>),
}

impl Item {
    /// False for a unit its submitter withdrew: it is dropped unwritten.
    fn take(&self) -> bool {
        match self {
            Item::Unit { progress, .. } => progress
                .compare_exchange(QUEUED, TAKEN, Ordering::AcqRel, Ordering::Acquire)
                .is_ok(),
            Item::Usage(..) => true,
        }
    }
}

impl Item {
    fn len(&self) -> usize {
        match self {
            Item::Unit { events, .. } => events.len(),
            Item::Usage(..) => 1,
        }
    }
}

/// A queued usage event's commit: one small handle per request (a oneshot), released by
/// the commit of the batch that holds the event, with every other handle of that batch.
#[must_use = "a durable use is only recorded once `committed` says so"]
pub struct Durable(oneshot::Receiver<()>);

/// The usage event was not committed: its batch failed (the event is kept and tried
/// again, but it may never be written), or the appender stopped first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the use was not committed to the log")]
pub struct NotCommitted;

impl Durable {
    /// Waits for the commit of the event's batch.
    pub async fn committed(self) -> Result<(), NotCommitted> {
        self.0.await.map_err(|_| NotCommitted)
    }
}

#[derive(Clone)]
pub struct Appender {
    tx: mpsc::Sender<Item>,
    depth: Arc<AtomicUsize>,
    stats: AppenderStats,
}

pub struct AppenderHandle {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Appender {
    pub fn spawn(
        store: Arc<dyn EventStore>,
        sink: Arc<dyn CommitSink>,
        cfg: AppenderConfig,
    ) -> (Appender, AppenderHandle) {
        let (tx, rx) = mpsc::channel(cfg.queue_capacity.max(1));
        let depth = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let stats = AppenderStats::default();
        let task = Task {
            stats: stats.clone(),
            store,
            sink,
            max_batch: cfg.max_batch.max(1),
            rx,
            depth: depth.clone(),
            stop: stop.clone(),
            stopping: false,
            delivered_through: None,
            undelivered: None,
        };
        let task = tokio::spawn(task.run());
        (Appender { tx, depth, stats }, AppenderHandle { stop, task })
    }

    /// A management command: an atomic unit; waits for its own commit; returns its
    /// envelopes or the typed error (Conflict → 409 later, Store → 503).
    pub async fn submit(&self, unit: Vec<NewEvent>) -> Result<Vec<Envelope>, AppendError> {
        if unit.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, mut answer) = oneshot::channel();
        let progress = Arc::new(AtomicU8::new(QUEUED));
        let item = Item::Unit {
            events: unit,
            reply,
            progress: progress.clone(),
        };
        let stalled = || {
            AppendError::Store(StoreError::Unavailable(
                "the appender did not take the command in time; the store is not taking writes"
                    .into(),
            ))
        };
        let deadline = tokio::time::Instant::now() + SUBMIT_WAIT;
        match tokio::time::timeout_at(deadline, self.send(item)).await {
            Ok(sent) => sent?,
            Err(_) => return Err(stalled()),
        }
        match tokio::time::timeout_at(deadline, &mut answer).await {
            Ok(answered) => answered.unwrap_or(Err(AppendError::Closed)),
            Err(_) => {
                let withdrawn = progress
                    .compare_exchange(QUEUED, WITHDRAWN, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok();
                if withdrawn {
                    return Err(stalled());
                }
                // Already in a batch: its outcome is on its way.
                answer.await.unwrap_or(Err(AppendError::Closed))
            }
        }
    }

    /// A usage event: waits only for queue space (back-pressure: when the queue is full
    /// the caller waits, the event is never dropped). `Err(Closed)` after shutdown.
    pub async fn record(&self, event: NewEvent) -> Result<(), AppendError> {
        self.send(Item::Usage(event, None)).await
    }

    /// A usage event whose caller will wait for its commit (`--usage-durability
    /// durable`): waits for queue space like [`Appender::record`], then hands back the
    /// handle that the commit of the event's batch releases.
    pub async fn record_durable(&self, event: NewEvent) -> Result<Durable, AppendError> {
        let (tx, rx) = oneshot::channel();
        self.send(Item::Usage(event, Some(tx))).await?;
        Ok(Durable(rx))
    }

    /// No room left in the queue: a usage event recorded now would wait for the store.
    pub fn is_full(&self) -> bool {
        !self.tx.is_closed() && self.tx.capacity() == 0
    }

    /// Items queued and not yet taken into a batch, counting callers still waiting for
    /// room, so under back-pressure it can exceed the queue's capacity.
    pub fn queue_depth(&self) -> usize {
        self.depth.load(Ordering::Relaxed)
    }

    /// Batch sizes, commit latency and committed events, for `/metrics`.
    pub fn stats(&self) -> &AppenderStats {
        &self.stats
    }

    async fn send(&self, item: Item) -> Result<(), AppendError> {
        // Counted before the send so that the task, which decrements on receipt, never
        // sees the count go below zero.
        self.depth.fetch_add(1, Ordering::Relaxed);
        // Undoes the count if the send fails or its caller stops waiting for room.
        struct Pending<'a>(&'a AtomicUsize);
        impl Drop for Pending<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        let pending = Pending(&self.depth);
        if self.tx.send(item).await.is_err() {
            return Err(AppendError::Closed);
        }
        std::mem::forget(pending);
        Ok(())
    }
}

impl AppenderHandle {
    /// Stops taking new events, drains and commits everything queued, then returns.
    /// If the store is down, this waits until it recovers: queued usage events are
    /// never dropped.
    pub async fn shutdown(self) {
        self.stop.cancel();
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "the appender task failed");
        }
    }
}

struct Task {
    stats: AppenderStats,
    store: Arc<dyn EventStore>,
    sink: Arc<dyn CommitSink>,
    max_batch: usize,
    rx: mpsc::Receiver<Item>,
    depth: Arc<AtomicUsize>,
    stop: CancellationToken,
    stopping: bool,
    /// The highest seq handed to the sink. Idempotent replays of events already
    /// committed come back from the store with lower seqs and are not handed over again.
    delivered_through: Option<u64>,
    /// The outcome of the last batch, not yet handed to the sink and the submitters. It
    /// is delivered while the next batch is being appended, or before the task waits.
    undelivered: Option<Done>,
}

/// A committed (or failed) batch on its way to the sink and the submitters.
struct Done {
    /// Newly committed envelopes, in seq order.
    fresh: Vec<Envelope>,
    answers: Vec<(Reply, Result<Vec<Envelope>, AppendError>)>,
}

type Reply = oneshot::Sender<Result<Vec<Envelope>, AppendError>>;

impl Task {
    async fn run(mut self) {
        // Usage events of failed batches, oldest first, waiting to be tried again.
        let mut retry: Vec<NewEvent> = Vec::new();
        let mut backoff = BACKOFF_START;
        loop {
            // Under steady load the queue is never empty and next() is never reached, so
            // a shutdown request is looked for here too.
            if !self.stopping && self.stop.is_cancelled() {
                self.close();
            }
            let mut items = Vec::new();
            if !retry.is_empty() {
                self.deliver().await;
                self.pause(backoff).await;
            } else if let Some(item) = self.try_next() {
                items.push(item);
            } else {
                // Nothing more to append right now: deliver before waiting.
                self.deliver().await;
                match self.next().await {
                    Some(item) => items.push(item),
                    None => break,
                }
            }
            let mut events = retry.len() + items.iter().map(Item::len).sum::<usize>();
            while events < self.max_batch {
                let Some(item) = self.try_next() else { break };
                events += item.len();
                items.push(item);
            }
            match self.commit(std::mem::take(&mut retry), items).await {
                Ok(()) => backoff = BACKOFF_START,
                Err((kept, e)) => {
                    tracing::warn!(
                        error = %e,
                        kept = kept.len(),
                        retry_in_ms = backoff.as_millis() as u64,
                        "append failed; usage events are kept and retried"
                    );
                    retry = kept;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
        self.deliver().await;
    }

    fn try_next(&mut self) -> Option<Item> {
        loop {
            let item = self.rx.try_recv().ok()?;
            self.depth.fetch_sub(1, Ordering::Relaxed);
            if item.take() {
                return Some(item);
            }
        }
    }

    /// Hands the last batch's envelopes to the sink, then answers its submitters.
    async fn deliver(&mut self) {
        deliver(&*self.sink, self.undelivered.take()).await;
    }

    /// The next queued item; `None` once the queue is closed and empty.
    async fn next(&mut self) -> Option<Item> {
        loop {
            let item = if self.stopping {
                self.rx.recv().await
            } else {
                tokio::select! {
                    item = self.rx.recv() => item,
                    () = self.stop.cancelled() => {
                        self.close();
                        continue;
                    }
                }
            };
            let item = item?;
            self.depth.fetch_sub(1, Ordering::Relaxed);
            if item.take() {
                return Some(item);
            }
        }
    }

    /// Sleeps before a retry, closing the queue meanwhile if shutdown is asked for.
    async fn pause(&mut self, backoff: Duration) {
        if self.stopping {
            tokio::time::sleep(backoff).await;
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = self.stop.cancelled() => {
                self.close();
                tokio::time::sleep(backoff).await;
            }
        }
    }

    fn close(&mut self) {
        // Senders waiting for room get Closed; what is already queued is still drained.
        self.rx.close();
        self.stopping = true;
    }

    /// Appends one batch: the usage events kept from failed batches first, then the new
    /// items in queue order. On a store error, answers the management units with it at
    /// once and hands back every usage event to be tried again.
    async fn commit(
        &mut self,
        retry: Vec<NewEvent>,
        items: Vec<Item>,
    ) -> Result<(), (Vec<NewEvent>, StoreError)> {
        let mut units: Vec<Vec<NewEvent>> = Vec::with_capacity(retry.len() + items.len());
        let mut replies: Vec<Option<Reply>> = Vec::with_capacity(units.capacity());
        // Durable usage events: their unit's index, and whom to tell once it committed.
        let mut waiters: Vec<(usize, oneshot::Sender<()>)> = Vec::new();
        for e in retry {
            units.push(vec![e]);
            replies.push(None);
        }
        for item in items {
            match item {
                Item::Unit { events, reply, .. } => {
                    units.push(events);
                    replies.push(Some(reply));
                }
                Item::Usage(e, waiter) => {
                    if let Some(w) = waiter {
                        waiters.push((units.len(), w));
                    }
                    units.push(vec![e]);
                    replies.push(None);
                }
            }
        }

        let batch_events: usize = units.iter().map(Vec::len).sum();
        let delivered_through = match self.delivered_through {
            Some(seq) => Ok(seq),
            None => self.store.head().await.map(|h| h.seq),
        };
        // The previous batch is delivered while SQLite works on this one: its sink call,
        // replies and freeing overlap the store's waits instead of preceding them.
        let previous = self.undelivered.take();
        let outcome = match delivered_through {
            Ok(seq) => {
                let append = async {
                    let t = std::time::Instant::now();
                    // On a store error the units come back, so nothing is copied for a retry.
                    let r = self.store.append_returning(units).await;
                    (r, t.elapsed())
                };
                let ((appended, took), ()) = futures::join!(append, deliver(&*self.sink, previous));
                appended.map(|r| (seq, r, took))
            }
            Err(error) => {
                deliver(&*self.sink, previous).await;
                Err(Unwritten { error, units })
            }
        };
        let (delivered_through, results, took) = match outcome {
            Ok(ok) => ok,
            Err(Unwritten { error, units }) => {
                // Their requests are told at once (dropped senders): not recorded.
                drop(waiters);
                // Usage events are kept to be tried again; commands get the error.
                let mut usage = Vec::new();
                let mut answers = Vec::new();
                for (unit, reply) in units.into_iter().zip(replies) {
                    match reply {
                        None => usage.extend(unit),
                        Some(reply) => {
                            answers.push((reply, Err(AppendError::Store(error.clone()))))
                        }
                    }
                }
                self.undelivered = Some(Done {
                    fresh: Vec::new(),
                    answers,
                });
                return Err((usage, error));
            }
        };

        // The commit is acknowledged: release the batch's durable waiters, every one at
        // once, before anything else (an event the store refused is not recorded).
        for (i, w) in waiters {
            if results.get(i).is_some_and(Result::is_ok) {
                let _ = w.send(());
            }
        }
        // Usage events have no one waiting, so their envelopes move to the sink; a
        // command's are copied, since its submitter gets them too.
        let mut fresh: Vec<Envelope> = Vec::new();
        let mut answers = Vec::new();
        for (result, reply) in results.into_iter().zip(replies) {
            match (result, reply) {
                (Ok(envs), None) => fresh.extend(envs),
                (Err(e), None) => tracing::warn!(error = %e, "a usage event was refused"),
                (result, Some(reply)) => {
                    if let Ok(envs) = &result {
                        fresh.extend(envs.iter().filter(|e| e.seq > delivered_through).cloned());
                    }
                    answers.push((reply, result));
                }
            }
        }
        fresh.retain(|env| env.seq > delivered_through);
        fresh.sort_unstable_by_key(|env| env.seq);
        fresh.dedup_by_key(|env| env.seq);
        self.stats.batch(batch_events, took, fresh.len());
        self.delivered_through = Some(fresh.last().map_or(delivered_through, |env| env.seq));
        self.undelivered = Some(Done { fresh, answers });
        Ok(())
    }
}

async fn deliver(sink: &dyn CommitSink, done: Option<Done>) {
    let Some(Done { fresh, answers }) = done else {
        return;
    };
    if !fresh.is_empty() {
        sink.committed(&fresh).await;
    }
    for (reply, result) in answers {
        let _ = reply.send(result);
    }
}
