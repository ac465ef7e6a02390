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
