//! Commands: decide from the live state, then append. Each command is one atomic unit
//! handed to the appender, and its response waits for the durable commit.

use std::sync::Arc;

use chrono::Utc;
use keyward_events::{
    Envelope, Event, ExpectedVersion, KeyCreated, NewEvent, Quota, RateLimit, Role, Scope,
    UserCreated,
};
use serde_json::{Map, Value};
use ulid::Ulid;

use keyward_events::{ExpireReason, KeyDeleted, KeyExpired, KeyRotated, KeyUpdated};
use keyward_projections::{KeyRecord, KeyStatus, State};

use crate::crypto::Secret;
use crate::live::Live;
use crate::store::AppendError;
use crate::store::appender::Appender;
use crate::time::Timestamp;

pub fn new_key_id() -> String {
    format!("key_{}", Ulid::new())
}
pub fn new_user_id() -> String {
    format!("usr_{}", Ulid::new())
}
pub fn new_provider_id() -> String {
    format!("prv_{}", Ulid::new())
}

/// Who is acting, and the request it came in on; recorded in every event's envelope.
#[derive(Clone, Debug)]
pub struct Actor {
    pub id: String,
    pub request_id: Option<String>,
}

impl Actor {
    pub fn system() -> Actor {
        Actor {
            id: keyward_events::SYSTEM_ACTOR.to_owned(),
            request_id: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Append(#[from] AppendError),
    #[error("{0}")]
    Invalid(String),
    /// A request field that does not fit the current state (an unknown provider, say).
    #[error("{field}: {detail}")]
    InvalidField { field: &'static str, detail: String },
    #[error("{0} was not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
}

/// A key to create, validated by the caller's layer.
#[derive(Clone, Debug)]
pub struct NewKey {
    pub name: String,
    pub owner_id: String,
    pub provider_ids: Vec<String>,
    pub expires_at: Timestamp,
    pub scopes: Vec<Scope>,
    pub models: Vec<String>,
    pub rate_limit: Option<RateLimit>,
    pub quota: Option<Quota>,
    pub ip_allowlist: Vec<String>,
    pub metadata: Map<String, Value>,
    pub rotated_from: Option<String>,
}

#[derive(Clone)]
pub struct Commands {
    pub live: Arc<Live>,
    pub appender: Appender,
}

impl Commands {
    pub fn new(live: Arc<Live>, appender: Appender) -> Self {
        Commands { live, appender }
    }

    fn event(&self, actor: &Actor, event: &Event, expected: ExpectedVersion) -> NewEvent {
        NewEvent::new(
            event,
            expected,
            Utc::now(),
            actor.id.clone(),
            actor.request_id.clone(),
        )
    }

    /// The `key.created` event for a new key, and its secret, not yet appended.
    pub fn key_created(&self, actor: &Actor, spec: NewKey) -> (NewEvent, String, Secret) {
        let secret = Secret::generate();
        let key_id = new_key_id();
        let ev = Event::KeyCreated(KeyCreated {
            key_id: key_id.clone(),
            name: spec.name,
            owner_id: spec.owner_id,
            provider_ids: spec.provider_ids,
            secret_hash: secret.hash().to_hex(),
            prefix: secret.display_prefix(),
            expires_at: spec.expires_at,
            scopes: spec.scopes,
            models: spec.models,
            rate_limit: spec.rate_limit,
            quota: spec.quota,
            ip_allowlist: spec.ip_allowlist,
            metadata: spec.metadata,
            rotated_from: spec.rotated_from,
        });
        (
            self.event(actor, &ev, ExpectedVersion::NoStream),
            key_id,
            secret,
        )
    }

    pub fn user_created(
        &self,
        actor: &Actor,
        username: &str,
        role: Role,
        password_hash: Option<String>,
    ) -> (NewEvent, String) {
        let user_id = new_user_id();
        let ev = Event::UserCreated(UserCreated {
            user_id: user_id.clone(),
            username: username.to_owned(),
            role,
            password_hash,
        });
        (self.event(actor, &ev, ExpectedVersion::NoStream), user_id)
    }

    pub async fn submit(&self, unit: Vec<NewEvent>) -> Result<Vec<Envelope>, CommandError> {
        Ok(self.appender.submit(unit).await?)
    }
}

/// Whose objects the caller may act on: everyone's (an admin) or only their own.
#[derive(Clone, Copy, Debug)]
pub enum Visibility<'a> {
    All,
    Owner(&'a str),
}

impl Visibility<'_> {
    pub fn admits(&self, owner_id: &str) -> bool {
        match self {
            Visibility::All => true,
            Visibility::Owner(me) => *me == owner_id,
        }
    }
}

/// A key the caller may see, or NotFound: another user's key is indistinguishable from
/// one that does not exist.
fn visible_key(
    state: &State,
    key_id: &str,
    vis: Visibility<'_>,
) -> Result<Arc<KeyRecord>, CommandError> {
    state
        .keys
        .get(key_id)
        .filter(|k| vis.admits(&k.owner_id))
        .cloned()
        .ok_or_else(|| CommandError::NotFound(format!("key {key_id}")))
}

fn status_word(s: KeyStatus) -> &'static str {
    match s {
        KeyStatus::Active => "active",
        KeyStatus::Grace => "in its rotation grace period",
        KeyStatus::Expired => "expired",
        KeyStatus::Deleted => "deleted",
    }
}

impl Commands {
    /// Checks that the owner and providers of a new key exist and may be used.
    pub fn check_key_refs(
        &self,
        owner_id: &str,
        provider_ids: &[String],
    ) -> Result<(), CommandError> {
        let state = self.live.read();
        match state.users.get(owner_id) {
            None => {
                return Err(CommandError::InvalidField {
                    field: "owner_id",
                    detail: format!("no user {owner_id}"),
                });
            }
            Some(u) if u.disabled => {
                return Err(CommandError::InvalidField {
                    field: "owner_id",
                    detail: format!("user {owner_id} is disabled"),
                });
            }
            Some(_) => {}
        }
        for p in provider_ids {
            if state.providers.get(p).is_none_or(|p| p.is_deleted()) {
                return Err(CommandError::InvalidField {
                    field: "provider_id",
                    detail: format!("no provider {p}"),
                });
            }
        }
        Ok(())
    }

    pub async fn create_key(
        &self,
        actor: &Actor,
        spec: NewKey,
    ) -> Result<(Arc<KeyRecord>, Secret), CommandError> {
        self.check_key_refs(&spec.owner_id, &spec.provider_ids)?;
        let (ev, key_id, secret) = self.key_created(actor, spec);
        self.submit(vec![ev]).await?;
        let key = self.live.read().keys.get(&key_id).cloned();
        key.map(|k| (k, secret))
            .ok_or_else(|| CommandError::NotFound(format!("key {key_id}")))
    }

    /// Applies a change to a key that is still usable (active or in grace).
    pub async fn update_key(
        &self,
        actor: &Actor,
        vis: Visibility<'_>,
        patch: KeyUpdated,
    ) -> Result<Arc<KeyRecord>, CommandError> {
        let key = visible_key(&self.live.read(), &patch.key_id, vis)?;
        match key.status(Utc::now()) {
            KeyStatus::Active | KeyStatus::Grace => {}
            s => {
                return Err(CommandError::Conflict(format!(
                    "key {} is {} and can no longer be changed",
                    key.key_id,
                    status_word(s)
                )));
            }
        }
        let key_id = patch.key_id.clone();
        let ev = self.event(
            actor,
            &Event::KeyUpdated(patch),
            ExpectedVersion::Exact(key.version),
        );
        self.submit(vec![ev]).await?;
        self.reread(&key_id)
    }

    /// Expires a key at once; the record stays.
    pub async fn expire_key(
        &self,
        actor: &Actor,
        vis: Visibility<'_>,
        key_id: &str,
    ) -> Result<Arc<KeyRecord>, CommandError> {
        let key = visible_key(&self.live.read(), key_id, vis)?;
        match key.status(Utc::now()) {
            KeyStatus::Active | KeyStatus::Grace => {}
            s => {
                return Err(CommandError::Conflict(format!(
                    "key {key_id} is already {}",
                    status_word(s)
                )));
            }
        }
        let ev = Event::KeyExpired(KeyExpired {
            key_id: key_id.to_owned(),
            reason: ExpireReason::Manual,
        });
        self.submit(vec![self.event(
            actor,
            &ev,
            ExpectedVersion::Exact(key.version),
        )])
        .await?;
        self.reread(key_id)
    }

    /// Soft-deletes a key. Deleting a deleted key changes nothing and writes nothing.
    pub async fn delete_key(
        &self,
        actor: &Actor,
        vis: Visibility<'_>,
        key_id: &str,
    ) -> Result<Arc<KeyRecord>, CommandError> {
        let key = visible_key(&self.live.read(), key_id, vis)?;
        if key.is_deleted() {
            return Ok(key);
        }
        let ev = Event::KeyDeleted(KeyDeleted {
            key_id: key_id.to_owned(),
        });
        self.submit(vec![self.event(
            actor,
            &ev,
            ExpectedVersion::Exact(key.version),
        )])
        .await?;
        self.reread(key_id)
    }

    /// Rotates an active key: a new key with the same settings, and the old one working
    /// until `grace_until`. Both events commit together or not at all; of two concurrent
    /// rotations one wins and the other conflicts on the old key's stream version.
    pub async fn rotate_key(
        &self,
        actor: &Actor,
        vis: Visibility<'_>,
        key_id: &str,
        grace_until: Timestamp,
        new_expires_at: Timestamp,
    ) -> Result<(Arc<KeyRecord>, Arc<KeyRecord>, Secret), CommandError> {
        let old = visible_key(&self.live.read(), key_id, vis)?;
        match old.status(Utc::now()) {
            KeyStatus::Active => {}
            KeyStatus::Grace => {
                return Err(CommandError::Conflict(format!(
                    "key {key_id} was already rotated to {}",
                    old.rotated_to.as_deref().unwrap_or("another key")
                )));
            }
            s => {
                return Err(CommandError::Conflict(format!(
                    "key {key_id} is {} and cannot be rotated",
                    status_word(s)
                )));
            }
        }
        self.check_key_refs(&old.owner_id, &old.provider_ids)?;
        let (created, new_id, secret) = self.key_created(
            actor,
            NewKey {
                name: old.name.clone(),
                owner_id: old.owner_id.clone(),
                provider_ids: old.provider_ids.clone(),
                expires_at: new_expires_at,
                scopes: old.scopes.clone(),
                models: old.models.clone(),
                rate_limit: old.rate_limit,
                quota: old.quota,
                ip_allowlist: old.ip_allowlist.clone(),
                metadata: old.metadata.clone(),
                rotated_from: Some(key_id.to_owned()),
            },
        );
        let rotated = Event::KeyRotated(KeyRotated {
            key_id: key_id.to_owned(),
            new_key_id: new_id.clone(),
            grace_until,
        });
        let unit = vec![
            self.event(actor, &rotated, ExpectedVersion::Exact(old.version)),
            created,
        ];
        self.submit(unit).await?;
        Ok((self.reread(key_id)?, self.reread(&new_id)?, secret))
    }

    fn reread(&self, key_id: &str) -> Result<Arc<KeyRecord>, CommandError> {
        self.live
            .read()
            .keys
            .get(key_id)
            .cloned()
            .ok_or_else(|| CommandError::NotFound(format!("key {key_id}")))
    }
}
