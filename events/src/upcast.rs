//! Upcasting: a stored payload is brought up to the current schema of its type as a
//! `serde_json::Value`, step by step, before the typed decode. Stored rows are never
//! rewritten; their hashes cover the shape they were written in.

use serde_json::{Value, json};

use crate::types::{Event, current_schema};

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown event type {0:?}")]
    UnknownType(String),
    #[error("{event_type} schema {schema} is newer than this build knows ({known})")]
    FutureSchema {
        event_type: String,
        schema: u16,
        known: u16,
    },
    #[error("{event_type} schema {schema} has no upcaster")]
    NoUpcaster { event_type: String, schema: u16 },
    #[error("{event_type} payload does not match its schema: {reason}")]
    Payload { event_type: String, reason: String },
}

/// Decodes a stored payload of any known schema into the current typed event. A payload
/// already at the current schema is decoded in place, without a copy: this is the replay
/// and start-up path.
pub fn decode(event_type: &str, schema: u16, data: &Value) -> Result<Event, DecodeError> {
    let known = current_schema(event_type)
        .ok_or_else(|| DecodeError::UnknownType(event_type.to_owned()))?;
    let payload_err = |e: serde_json::Error| DecodeError::Payload {
        event_type: event_type.to_owned(),
        reason: e.to_string(),
    };
    if schema == known {
        return decode_current(event_type, data).map_err(payload_err);
    }
    let data = upcast(event_type, schema, data.clone())?;
    decode_current(event_type, &data).map_err(payload_err)
}

/// The typed decode of a current-schema payload, dispatched on the type name so serde
/// reads the payload struct directly instead of buffering a tagged enum.
fn decode_current(event_type: &str, data: &Value) -> Result<Event, serde_json::Error> {
    use serde::Deserialize;

    use crate::types::*;
    Ok(match event_type {
        "user.created" => Event::UserCreated(UserCreated::deserialize(data)?),
        "user.updated" => Event::UserUpdated(UserUpdated::deserialize(data)?),
        "user.disabled" => Event::UserDisabled(UserDisabled::deserialize(data)?),
        "user.enabled" => Event::UserEnabled(UserEnabled::deserialize(data)?),
        "key.created" => Event::KeyCreated(KeyCreated::deserialize(data)?),
        "key.updated" => Event::KeyUpdated(KeyUpdated::deserialize(data)?),
        "key.used" => Event::KeyUsed(KeyUsed::deserialize(data)?),
        "key.denied" => Event::KeyDenied(KeyDenied::deserialize(data)?),
        "key.expired" => Event::KeyExpired(KeyExpired::deserialize(data)?),
        "key.rotated" => Event::KeyRotated(KeyRotated::deserialize(data)?),
        "key.deleted" => Event::KeyDeleted(KeyDeleted::deserialize(data)?),
        "key.notice_sent" => Event::KeyNoticeSent(KeyNoticeSent::deserialize(data)?),
        "provider.created" => Event::ProviderCreated(ProviderCreated::deserialize(data)?),
        "provider.updated" => Event::ProviderUpdated(ProviderUpdated::deserialize(data)?),
        "provider.deleted" => Event::ProviderDeleted(ProviderDeleted::deserialize(data)?),
        "provider.key_updated" => Event::ProviderKeyUpdated(ProviderKeyUpdated::deserialize(data)?),
        "provider.verified" => Event::ProviderVerified(ProviderVerified::deserialize(data)?),
        "audit.read" => Event::AuditRead(AuditRead::deserialize(data)?),
        "user.signed_in" => Event::UserSignedIn(UserSignedIn::deserialize(data)?),
        "user.signed_out" => Event::UserSignedOut(UserSignedOut::deserialize(data)?),
        "audit.archived" => Event::AuditArchived(AuditArchived::deserialize(data)?),
        // The caller checked the type against `current_schema`; keep both lists in step.
        other => {
            return Err(serde::de::Error::custom(format!("no decoder for {other}")));
        }
    })
}

/// Brings `data` from `schema` to the current schema of `event_type`.
pub fn upcast(event_type: &str, mut schema: u16, mut data: Value) -> Result<Value, DecodeError> {
    let known = current_schema(event_type)
        .ok_or_else(|| DecodeError::UnknownType(event_type.to_owned()))?;
    if schema > known {
        return Err(DecodeError::FutureSchema {
            event_type: event_type.to_owned(),
            schema,
            known,
        });
    }
    while schema < known {
        data = match (event_type, schema) {
            ("key.created", 1) => key_created_v1_to_v2(data, event_type)?,
            ("user.created", 1) => user_created_v1_to_v2(data, event_type)?,
            ("user.updated", 1) => user_updated_v1_to_v2(data, event_type)?,
            _ => {
                return Err(DecodeError::NoUpcaster {
                    event_type: event_type.to_owned(),
                    schema,
                });
            }
        };
        schema += 1;
    }
    Ok(data)
}

fn key_created_v1_to_v2(data: Value, event_type: &str) -> Result<Value, DecodeError> {
    let v1: frozen::KeyCreatedV1 =
        serde_json::from_value(data).map_err(|e| DecodeError::Payload {
            event_type: event_type.to_owned(),
            reason: format!("schema 1: {e}"),
        })?;
    Ok(json!({
        "key_id": v1.key_id,
        "name": v1.name,
        "owner_id": v1.owner_id,
        "provider_ids": v1.provider_id.into_iter().collect::<Vec<_>>(),
        "secret_hash": v1.secret_hash,
        "prefix": v1.prefix,
        "expires_at": v1.expires_at,
        "scopes": v1.scopes,
        "models": v1.models,
        "rate_limit": v1.rate_limit,
        "quota": Value::Null,
        "ip_allowlist": v1.ip_allowlist,
        "metadata": {},
        "rotated_from": v1.rotated_from,
    }))
}

fn user_created_v1_to_v2(data: Value, event_type: &str) -> Result<Value, DecodeError> {
    let v1: frozen::UserCreatedV1 =
        serde_json::from_value(data).map_err(|e| DecodeError::Payload {
            event_type: event_type.to_owned(),
            reason: format!("schema 1: {e}"),
        })?;
    Ok(json!({
        "user_id": v1.user_id,
        "username": v1.username,
        "role": v1.role,
        "legacy_password_hash": v1.password_hash,
    }))
}

fn user_updated_v1_to_v2(data: Value, event_type: &str) -> Result<Value, DecodeError> {
    let v1: frozen::UserUpdatedV1 =
        serde_json::from_value(data).map_err(|e| DecodeError::Payload {
            event_type: event_type.to_owned(),
            reason: format!("schema 1: {e}"),
        })?;
    Ok(json!({
        "user_id": v1.user_id,
        "username": v1.username,
        "role": v1.role,
        "legacy_password_hash": v1.password_hash,
    }))
}

/// Older payload shapes, frozen as they were written. Never edit one: add a new schema.
pub mod frozen {
    use serde::{Deserialize, Serialize};
    use serde_json::Value;

    /// `key.created` schema 1: one optional provider, no quota, no metadata.
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct KeyCreatedV1 {
        pub key_id: String,
        pub name: String,
        pub owner_id: String,
        #[serde(default)]
        pub provider_id: Option<String>,
        pub secret_hash: String,
        pub prefix: String,
        pub expires_at: String,
        pub scopes: Vec<String>,
        #[serde(default)]
        pub models: Vec<String>,
        #[serde(default)]
        pub rate_limit: Option<Value>,
        #[serde(default)]
        pub ip_allowlist: Vec<String>,
        #[serde(default)]
        pub rotated_from: Option<String>,
    }

    /// `user.created` schema 1: the password's argon2id PHC string in plaintext.
    #[derive(Clone, PartialEq, Serialize, Deserialize)]
    pub struct UserCreatedV1 {
        pub user_id: String,
        pub username: String,
        pub role: String,
        #[serde(default)]
        pub password_hash: Option<String>,
    }

    /// `user.updated` schema 1: the password's argon2id PHC string in plaintext.
    #[derive(Clone, PartialEq, Serialize, Deserialize)]
    pub struct UserUpdatedV1 {
        pub user_id: String,
        #[serde(default)]
        pub username: Option<String>,
        #[serde(default)]
        pub role: Option<String>,
        #[serde(default)]
        pub password_hash: Option<String>,
    }

    // No derived `Debug`: a schema 1 row's hash must not reach a log line through one.
    impl std::fmt::Debug for UserCreatedV1 {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("UserCreatedV1")
                .field("user_id", &self.user_id)
                .field("username", &self.username)
                .field("role", &self.role)
                .finish_non_exhaustive()
        }
    }

    impl std::fmt::Debug for UserUpdatedV1 {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("UserUpdatedV1")
                .field("user_id", &self.user_id)
                .field("username", &self.username)
                .field("role", &self.role)
                .finish_non_exhaustive()
        }
    }
}

/// What a reader may see of a stored event: the exports, `/api/v1/audit/events`, the
/// console. A schema 1 `user.created` or `user.updated` held the password's argon2id PHC
/// string in plaintext; its value is replaced by [`REDACTED`]. Everything else is returned
/// as stored. The stored row is not changed (its hash covers those bytes): the chain is
/// verified against the store, and a redacted line of an export no longer verifies on its
/// own (see SECURITY.md).
pub fn readable(env: &crate::Envelope) -> std::borrow::Cow<'_, crate::Envelope> {
    use std::borrow::Cow;
    let legacy = env.schema < 2
        && matches!(env.event_type.as_str(), "user.created" | "user.updated")
        && env.data.get("password_hash").is_some_and(|v| !v.is_null());
    if !legacy {
        return Cow::Borrowed(env);
    }
    let mut out = env.clone();
    if let Some(m) = out.data.as_object_mut() {
        m.insert(
            "password_hash".to_owned(),
            Value::String(REDACTED.to_owned()),
        );
    }
    Cow::Owned(out)
}

/// What [`readable`] puts in place of a schema 1 password hash.
pub const REDACTED: &str = "<redacted>";
