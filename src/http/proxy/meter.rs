//! The one `key.used` of a proxied request: what it records, when, and what happens when
//! the client goes away first.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use keyward_events::{Event, ExpectedVersion, KeyUsed, NewEvent, UsageOutcome};

use crate::live::reservations::Reservation;
use crate::metrics::ProxyMetrics;
use crate::providers::Tokens;
use crate::store::appender::Appender;

pub struct MeterSpec {
    pub(super) appender: Appender,
    pub(super) key_id: String,
    pub(super) provider_id: String,
    pub(super) model: Option<String>,
    /// The provider or the key names the model: `/metrics` counts it under its name.
    pub(super) model_named: bool,
    pub(super) endpoint: String,
    pub(super) stream: bool,
    pub(super) client_ip: Option<String>,
    pub(super) request_id: String,
    pub(super) started: Instant,
    pub(super) metrics: Arc<ProxyMetrics>,
    /// `--usage-durability durable`: [`Meter::record`] returns once the event committed.
    pub(super) durable: bool,
}

/// Under `--usage-durability durable`: the use was not committed, so its answer must not
/// complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotRecorded;

/// The one `key.used` of a request. Dropped before it was recorded (the client went away
/// while the answer was on its way), it records `client_closed` with the tokens and
/// upstream latency seen so far, so that no admitted request goes unrecorded.
pub struct Meter {
    spec: Option<MeterSpec>,
    /// The request's place in its key's quota; given back once the use is queued (the
    /// ledger counts the queued use then, until its fold).
    hold: Option<Reservation>,
    pub(crate) tokens_so_far: Tokens,
    pub(crate) upstream_so_far: Option<Duration>,
}

/// The status recorded for a client that went away: nginx's "client closed request".
pub const CLIENT_CLOSED_STATUS: u16 = 499;

/// Prompt plus completion, as a token quota counts them (saturating, as the projection).
fn total(t: Tokens) -> u64 {
    t.prompt.saturating_add(t.completion)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl Meter {
    pub(super) fn new(hold: Option<Reservation>, spec: MeterSpec) -> Meter {
        Meter {
            spec: Some(spec),
            hold,
            tokens_so_far: Tokens::default(),
            upstream_so_far: None,
        }
    }

    /// Whether [`Meter::record`] waits for the commit (`--usage-durability durable`).
    pub fn durable(&self) -> bool {
        self.spec.as_ref().is_some_and(|s| s.durable)
    }

    /// The request's `key.used`, counted in the metrics as it is built: it is built once.
    fn event(
        s: &MeterSpec,
        outcome: UsageOutcome,
        status: u16,
        tokens: Tokens,
        upstream: Option<Duration>,
    ) -> NewEvent {
        let used = KeyUsed {
            key_id: s.key_id.clone(),
            provider_id: s.provider_id.clone(),
            model: s.model.clone(),
            endpoint: s.endpoint.clone(),
            outcome,
            status,
            latency_us: micros(s.started.elapsed()),
            upstream_latency_us: upstream.map(micros),
            prompt_tokens: tokens.prompt,
            completion_tokens: tokens.completion,
            stream: s.stream,
            client_ip: s.client_ip.clone(),
        };
        s.metrics.used(&used, s.model_named);
        NewEvent::new(
            &Event::KeyUsed(used),
            ExpectedVersion::Any,
            Utc::now(),
            s.key_id.clone(),
            Some(s.request_id.clone()),
        )
    }

    /// Queues the event (waiting for room, never dropping it). Once only. Under
    /// `durable` it then waits for the event's commit, and says if it did not commit: the
    /// caller must then cut its answer off. Under `async` it is always `Ok`.
    #[must_use = "under durable, an answer whose use was not recorded must not complete"]
    pub async fn record(
        &mut self,
        outcome: UsageOutcome,
        status: u16,
        tokens: Tokens,
        upstream: Option<Duration>,
    ) -> Result<(), NotRecorded> {
        let Some(s) = &self.spec else { return Ok(()) };
        tracing::debug!(
            request_id = %s.request_id,
            key_id = %s.key_id,
            provider_id = %s.provider_id,
            ?outcome,
            status,
            prompt_tokens = tokens.prompt,
            completion_tokens = tokens.completion,
            "proxied"
        );
        let ev = Meter::event(s, outcome, status, tokens, upstream);
        // Counted from before it is queued; if the wait below is cut short, `recorded`
        // withdraws it and the hold stays for the use the guard records instead.
        let recorded = self
            .hold
            .as_ref()
            .map(|h| h.record(ev.event_id, total(tokens)));
        let queued = if s.durable {
            s.appender.record_durable(ev).await.map(Some)
        } else {
            s.appender.record(ev).await.map(|()| None)
        };
        let durable = s.durable;
        let request_id = s.request_id.clone();
        let queued = match queued {
            Err(_) => {
                tracing::warn!(%request_id, "the usage queue is closed; a use was not recorded");
                None
            }
            Ok(waiting) => {
                if let Some(r) = recorded {
                    r.queued();
                }
                Some(waiting)
            }
        };
        // Only now: if the wait above is cut short, the guard still records the use.
        self.spec = None;
        self.hold = None;
        match queued {
            None if durable => Err(NotRecorded),
            None | Some(None) => Ok(()),
            Some(Some(waiting)) => waiting.committed().await.map_err(|_| {
                tracing::warn!(%request_id, "a use was not committed; its answer is cut off");
                NotRecorded
            }),
        }
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        let Some(s) = self.spec.take() else { return };
        let ev = Meter::event(
            &s,
            UsageOutcome::ClientClosed,
            CLIENT_CLOSED_STATUS,
            self.tokens_so_far,
            self.upstream_so_far,
        );
        tracing::debug!(request_id = %s.request_id, key_id = %s.key_id, "the client went away");
        let recorded = self
            .hold
            .take()
            .map(|h| h.record(ev.event_id, total(self.tokens_so_far)));
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    if s.appender.record(ev).await.is_err() {
                        tracing::warn!(
                            "the usage queue is closed; a client_closed use was not recorded"
                        );
                    } else if let Some(r) = recorded {
                        r.queued();
                    }
                });
            }
            Err(_) => tracing::warn!("no runtime; a client_closed use was not recorded"),
        }
    }
}
