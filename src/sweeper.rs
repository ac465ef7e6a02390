//! The expiry sweeper: writes `key.expired(scheduled)` for keys whose expiry passed and
//! `key.expired(rotated)` for rotated keys whose grace ended.
//!
//! Requests never wait for it: auth compares expiry with the clock on every call. The
//! event is the record. Each expiry is written exactly once because it is appended with
//! the key stream's version that the sweeper saw: a second sweeper (another node, or a
//! manual expire racing this one) gets a conflict and writes nothing.

use std::time::Duration;

use chrono::Utc;
use keyward_events::{Event, ExpectedVersion, ExpireReason, KeyExpired, NewEvent, SYSTEM_ACTOR};
use tokio::task::JoinHandle;

use crate::commands::Commands;
use crate::store::AppendError;

pub const INTERVAL: Duration = Duration::from_secs(1);

/// Writes the due expiries. Returns how many this call wrote.
pub async fn sweep_once(cmds: &Commands) -> Result<usize, AppendError> {
    let now = Utc::now();
    let due: Vec<(String, ExpireReason, u64)> = {
        let state = cmds.live.read();
        state
            .keys
            .iter()
            .filter(|k| k.expired().is_none() && !k.is_deleted())
            .filter_map(|k| match k.grace_until() {
                Some(g) if k.rotated_to().is_some() && g <= now => {
                    Some((k.key_id().to_owned(), ExpireReason::Rotated, k.version))
                }
                _ if k.expires_at <= now => {
                    Some((k.key_id().to_owned(), ExpireReason::Scheduled, k.version))
                }
                _ => None,
            })
            .collect()
    };
    let mut written = 0;
    for (key_id, reason, version) in due {
        let ev = Event::KeyExpired(KeyExpired { key_id, reason });
        let unit = vec![NewEvent::new(
            &ev,
            ExpectedVersion::Exact(version),
            now,
            SYSTEM_ACTOR,
            None,
        )];
        match cmds.appender.submit(unit).await {
            Ok(_) => written += 1,
            // Someone else changed or expired the key first; the next pass re-reads it.
            Err(AppendError::Conflict { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(written)
}

pub fn spawn(cmds: Commands, mut stop: tokio::sync::watch::Receiver<bool>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            match sweep_once(&cmds).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(expired = n, "sweeper expired keys"),
                Err(e) => tracing::warn!(error = %e, "sweeper could not write expiries; retrying"),
            }
        }
    })
}
