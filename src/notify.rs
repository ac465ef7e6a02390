//! Expiry notices: a webhook told when a key is about to stop working, when it has
//! stopped, and when a rotated key is still in use as its grace runs out.
//!
//! Each notice is first appended as `key.notice_sent` on the key's stream with the version
//! the notifier saw, and only then delivered. Of several nodes (or a restart) exactly one
//! append wins, so a notice is sent once. The price is that a process that dies while it
//! is still retrying a delivery does not send that notice again: the log says it was
//! claimed, and `keyward keys expiring` still lists the key.
//!
//! The body is JSON, signed with HMAC-SHA256 under the configured secret:
//! `x-keyward-signature: sha256=<hex>` over the exact body bytes.

use std::time::Duration;

use chrono::Utc;
use hmac::{Hmac, Mac};
use keyward_events::{
    Event, ExpectedVersion, KeyNoticeSent, NewEvent, NoticeKind, SYSTEM_ACTOR, time::Timestamp,
};
use keyward_projections::{KeyRecord, KeyStatus, State};
use serde_json::json;
use sha2::Sha256;
use tokio::task::JoinHandle;

use crate::commands::Commands;
use crate::config::NoticeWebhook as Webhook;
use crate::store::AppendError;

pub const SIGNATURE_HEADER: &str = "x-keyward-signature";
/// How close to the end of its grace a rotated key that is still used is reported.
pub const GRACE_NOTICE_WINDOW: chrono::Duration = chrono::Duration::days(1);
const ATTEMPTS: u32 = 6;
const BACKOFF_START: Duration = Duration::from_millis(500);

/// When a key stops (or stopped) working: [`KeyRecord::ends_at`].
pub fn ends_at(k: &KeyRecord) -> Timestamp {
    k.ends_at()
}

struct Due {
    key_id: String,
    kind: NoticeKind,
    ends_at: Timestamp,
    version: u64,
    body: serde_json::Value,
}

/// The notices due now, at most one per key (each append moves the key's version).
fn due(state: &State, now: Timestamp, within: chrono::Duration) -> Vec<Due> {
    let mut out = Vec::new();
    for k in state.keys.iter() {
        if k.is_deleted() {
            continue;
        }
        let ends = ends_at(k);
        let sent = |kind| k.notices().iter().any(|(n, e)| *n == kind && *e == ends);
        let status = k.status(now);
        let grace_used = state
            .usage
            .totals(k.key_id())
            .is_some_and(|t| t.grace_requests > 0);
        let kind = match status {
            // A key that ended long before the webhook was set up is not news.
            KeyStatus::Expired if ends > now - within && !sent(NoticeKind::Expired) => {
                NoticeKind::Expired
            }
            KeyStatus::Grace
                if grace_used
                    && ends - now <= GRACE_NOTICE_WINDOW
                    && !sent(NoticeKind::GraceInUse) =>
            {
                NoticeKind::GraceInUse
            }
            KeyStatus::Active | KeyStatus::Grace
                if ends - now <= within && !sent(NoticeKind::Expiring) =>
            {
                NoticeKind::Expiring
            }
            _ => continue,
        };
        let owner = state.users.get(k.owner_id()).map(|u| u.username.clone());
        let body = json!({
            "type": kind,
            "key_id": k.key_id(),
            "name": k.name(),
            "prefix": k.prefix(),
            "owner_id": k.owner_id(),
            "owner": owner,
            "ends_at": crate::time::format(&ends),
            "rotated_to": k.rotated_to(),
            "sent_at": crate::time::format(&now),
        });
        out.push(Due {
            key_id: k.key_id().to_owned(),
            kind,
            ends_at: ends,
            version: k.version,
            body,
        });
    }
    out
}

pub fn sign(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes a key of any length.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Claims and sends the notices due now. Returns how many this call claimed.
pub async fn notify_once(
    cmds: &Commands,
    hook: &Webhook,
    client: &reqwest::Client,
) -> Result<usize, AppendError> {
    let now = Utc::now();
    let due = due(&cmds.live.read(), now, hook.within);
    let mut claimed = 0;
    for d in due {
        let ev = Event::KeyNoticeSent(KeyNoticeSent {
            key_id: d.key_id.clone(),
            kind: d.kind,
            ends_at: d.ends_at,
        });
        let unit = vec![NewEvent::new(
            &ev,
            ExpectedVersion::Exact(d.version),
            now,
            SYSTEM_ACTOR,
            None,
        )];
        let notice_id = match cmds.appender.submit(unit).await {
            Ok(envs) => envs
                .first()
                .map(|e| e.event_id.to_string())
                .unwrap_or_default(),
            // Another node claimed it, or the key changed: the next pass re-reads it.
            Err(AppendError::Conflict { .. }) => continue,
            Err(e) => return Err(e),
        };
        claimed += 1;
        let mut body = d.body;
        body["notice_id"] = json!(notice_id);
        let client = client.clone();
        let hook = hook.clone();
        tokio::spawn(deliver(client, hook, d.key_id, body));
    }
    Ok(claimed)
}

async fn deliver(client: reqwest::Client, hook: Webhook, key_id: String, body: serde_json::Value) {
    let bytes = body.to_string().into_bytes();
    let signature = sign(hook.secret.expose().as_bytes(), &bytes);
    let mut backoff = BACKOFF_START;
    for attempt in 1..=ATTEMPTS {
        let res = client
            .post(&hook.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, &signature)
            .body(bytes.clone())
            .send()
            .await;
        match res {
            Ok(r) if r.status().is_success() => {
                tracing::info!(%key_id, kind = %body["type"], attempt, "expiry notice delivered");
                return;
            }
            Ok(r) => {
                tracing::warn!(%key_id, status = r.status().as_u16(), attempt, "the notice webhook refused a notice")
            }
            Err(e) => {
                tracing::warn!(%key_id, error = %crate::redact::http_error(&e), attempt, "cannot reach the notice webhook")
            }
        }
        if attempt < ATTEMPTS {
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
    }
    tracing::error!(%key_id, kind = %body["type"], "an expiry notice could not be delivered; it is not retried");
}

/// The webhook's HTTP client: timeouts, no redirects, no environment proxy.
pub fn client() -> reqwest::Result<reqwest::Client> {
    crate::net::client_builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30))
        .build()
}

pub fn spawn(
    cmds: Commands,
    hook: Webhook,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let client = match client() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %crate::redact::http_error(&e), "cannot build the notice webhook client; no notices will be sent");
                return;
            }
        };
        let mut tick = tokio::time::interval(hook.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            match notify_once(&cmds, &hook, &client).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(notices = n, "expiry notices claimed"),
                Err(e) => tracing::warn!(error = %e, "cannot record expiry notices; retrying"),
            }
        }
    })
}
