//! `/metrics`: the whole exposition, from the families in [`crate::metrics`] and the gauges
//! that describe state (keys by status, keys expiring soon, the head, the tail lag),
//! computed at scrape time from the live projection, so they cannot drift from it. Each
//! scrape builds a fresh registry of handles to the long-lived metrics: there is no global
//! recorder, so several apps in one process (the tests) never share counters.

use std::sync::atomic::{AtomicI64, AtomicU64};

use chrono::Utc;
use keyward_projections::KeyStatus;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use crate::App;

fn status_name(s: KeyStatus) -> &'static str {
    match s {
        KeyStatus::Active => "active",
        KeyStatus::Grace => "grace",
        KeyStatus::Expired => "expired",
        KeyStatus::Deleted => "deleted",
    }
}

/// The days ahead that `keyward_keys_expiring` looks.
pub const EXPIRING_WITHIN_DAYS: i64 = 7;

/// The whole exposition, in the OpenMetrics text format.
pub fn render(app: &App) -> Result<String, std::fmt::Error> {
    let mut r = Registry::default();
    app.proxy.metrics().register(&mut r);
    let appender = &app.commands.appender;
    appender.stats().set_queue_depth(appender.queue_depth());
    appender.stats().register(&mut r);
    r.register(
        "keyward_log_lines_dropped",
        "Log lines dropped because the log writer's buffer was full (stderr slower than the lines come)",
        prometheus_client::metrics::counter::ConstCounter::new(crate::metrics::log_lines_dropped()),
    );

    let by_status: Family<Vec<(&'static str, &'static str)>, Gauge> = Family::default();
    let expiring: Gauge = Gauge::default();
    let head = {
        let state = app.live.read();
        let now = Utc::now();
        let soon = now + chrono::Duration::days(EXPIRING_WITHIN_DAYS);
        for s in [
            KeyStatus::Active,
            KeyStatus::Grace,
            KeyStatus::Expired,
            KeyStatus::Deleted,
        ] {
            by_status
                .get_or_create(&vec![("status", status_name(s))])
                .set(0);
        }
        let mut n_expiring = 0;
        for k in state.keys.iter() {
            let status = k.status(now);
            by_status
                .get_or_create(&vec![("status", status_name(status))])
                .inc();
            if matches!(status, KeyStatus::Active | KeyStatus::Grace) && k.ends_at() <= soon {
                n_expiring += 1;
            }
        }
        expiring.set(n_expiring);
        state.head.seq
    };
    r.register(
        "keyward_keys",
        "Keys in the live projection, by status",
        by_status,
    );
    r.register(
        "keyward_keys_expiring_7d",
        "Active or grace keys that stop working (expiry, or end of rotation grace) within 7 days",
        expiring,
    );
    let head_seq: Gauge<i64, AtomicI64> = Gauge::default();
    head_seq.set(i64::try_from(head).unwrap_or(i64::MAX));
    r.register(
        "keyward_projection_head_seq",
        "The seq of the last event folded into the live projection",
        head_seq,
    );
    if crate::store::is_postgres(&app.config.database_url) {
        let tail = app.live.tail_stats();
        let lag: Gauge<f64, AtomicU64> = Gauge::default();
        lag.set(tail.lag_us() as f64 / 1e6);
        r.register_with_unit(
            "keyward_tail_lag",
            "How stale this node was about the newest event another node wrote, when it folded it",
            Unit::Seconds,
            lag,
        );
        let events: Counter = Counter::default();
        events.inc_by(tail.events());
        r.register(
            "keyward_tail_events",
            "Events folded from the shared store rather than from this node's commits",
            events,
        );
        let reconnects: Counter = Counter::default();
        reconnects.inc_by(tail.reconnects());
        r.register(
            "keyward_tail_reconnects",
            "Times the tail set up its notification connection again",
            reconnects,
        );
        let listening: Gauge = Gauge::default();
        listening.set(i64::from(tail.listening()));
        r.register(
            "keyward_tail_listening",
            "1 while the tail is subscribed to notifications, 0 while it polls",
            listening,
        );
    }
    let ready: Gauge = Gauge::default();
    ready.set(i64::from(app.is_ready()));
    r.register(
        "keyward_ready",
        "1 when ready for traffic, 0 while starting or draining",
        ready,
    );

    let mut out = String::new();
    encode(&mut out, &r)?;
    Ok(out)
}
