//! The event types. Each variant's `type` name and its payload shape at a given `schema`
//! never change: renaming a Rust item must never rename a stored event. A payload change
//! bumps the schema in [`Event::schema`] and adds an upcaster in [`crate::upcast`].

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::hash::Hash32;
use crate::time::{self, Timestamp};

pub const SYSTEM_ACTOR: &str = "system";

/// Every event Keyward records, tagged by its stable dotted name.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum Event {
    #[serde(rename = "user.created")]
    UserCreated(UserCreated),
    #[serde(rename = "user.updated")]
    UserUpdated(UserUpdated),
    #[serde(rename = "user.disabled")]
    UserDisabled(UserDisabled),
    #[serde(rename = "user.enabled")]
    UserEnabled(UserEnabled),
    #[serde(rename = "key.created")]
    KeyCreated(KeyCreated),
    #[serde(rename = "key.updated")]
    KeyUpdated(KeyUpdated),
    #[serde(rename = "key.used")]
    KeyUsed(KeyUsed),
    #[serde(rename = "key.denied")]
    KeyDenied(KeyDenied),
    #[serde(rename = "key.expired")]
    KeyExpired(KeyExpired),
    #[serde(rename = "key.rotated")]
    KeyRotated(KeyRotated),
    #[serde(rename = "key.deleted")]
    KeyDeleted(KeyDeleted),
    #[serde(rename = "key.notice_sent")]
    KeyNoticeSent(KeyNoticeSent),
    #[serde(rename = "provider.created")]
    ProviderCreated(ProviderCreated),
    #[serde(rename = "provider.updated")]
    ProviderUpdated(ProviderUpdated),
    #[serde(rename = "provider.deleted")]
    ProviderDeleted(ProviderDeleted),
    #[serde(rename = "provider.key_updated")]
    ProviderKeyUpdated(ProviderKeyUpdated),
    #[serde(rename = "provider.verified")]
    ProviderVerified(ProviderVerified),
    #[serde(rename = "audit.read")]
    AuditRead(AuditRead),
    #[serde(rename = "user.signed_in")]
    UserSignedIn(UserSignedIn),
    #[serde(rename = "user.signed_out")]
    UserSignedOut(UserSignedOut),
    #[serde(rename = "audit.archived")]
    AuditArchived(AuditArchived),
}

/// Every type name, in the order of the table in DESIGN.md.
pub const EVENT_TYPES: &[&str] = &[
    "user.created",
    "user.updated",
    "user.disabled",
    "user.enabled",
    "key.created",
    "key.updated",
    "key.used",
    "key.denied",
    "key.expired",
    "key.rotated",
    "key.deleted",
    "key.notice_sent",
    "provider.created",
    "provider.updated",
    "provider.deleted",
    "provider.key_updated",
    "provider.verified",
    "audit.read",
    "user.signed_in",
    "user.signed_out",
    "audit.archived",
];

impl Event {
    pub fn type_name(&self) -> &'static str {
        match self {
            Event::UserCreated(_) => "user.created",
            Event::UserUpdated(_) => "user.updated",
            Event::UserDisabled(_) => "user.disabled",
            Event::UserEnabled(_) => "user.enabled",
            Event::KeyCreated(_) => "key.created",
            Event::KeyUpdated(_) => "key.updated",
            Event::KeyUsed(_) => "key.used",
            Event::KeyDenied(_) => "key.denied",
            Event::KeyExpired(_) => "key.expired",
            Event::KeyRotated(_) => "key.rotated",
            Event::KeyDeleted(_) => "key.deleted",
            Event::KeyNoticeSent(_) => "key.notice_sent",
            Event::ProviderCreated(_) => "provider.created",
            Event::ProviderUpdated(_) => "provider.updated",
            Event::ProviderDeleted(_) => "provider.deleted",
            Event::ProviderKeyUpdated(_) => "provider.key_updated",
            Event::ProviderVerified(_) => "provider.verified",
            Event::AuditRead(_) => "audit.read",
            Event::UserSignedIn(_) => "user.signed_in",
            Event::UserSignedOut(_) => "user.signed_out",
            Event::AuditArchived(_) => "audit.archived",
        }
    }

    /// The schema this build writes for the event's type.
    pub fn schema(&self) -> u16 {
        current_schema(self.type_name()).unwrap_or(1)
    }

    /// The stream the event belongs to. Usage and denials go to `usage:<key id>` rather
    /// than the key's own stream, so that traffic never moves the version a management
    /// command expects and a PATCH under load does not fail with a spurious 409.
    pub fn stream(&self) -> String {
        match self {
            Event::UserCreated(e) => user_stream(&e.user_id),
            Event::UserUpdated(e) => user_stream(&e.user_id),
            Event::UserDisabled(e) => user_stream(&e.user_id),
            Event::UserEnabled(e) => user_stream(&e.user_id),
            Event::KeyCreated(e) => key_stream(&e.key_id),
            Event::KeyUpdated(e) => key_stream(&e.key_id),
            Event::KeyUsed(e) => usage_stream(&e.key_id),
            Event::KeyDenied(e) => usage_stream(&e.key_id),
            Event::KeyExpired(e) => key_stream(&e.key_id),
            Event::KeyRotated(e) => key_stream(&e.key_id),
            Event::KeyDeleted(e) => key_stream(&e.key_id),
            Event::KeyNoticeSent(e) => key_stream(&e.key_id),
            Event::ProviderCreated(e) => provider_stream(&e.provider_id),
            Event::ProviderUpdated(e) => provider_stream(&e.provider_id),
            Event::ProviderDeleted(e) => provider_stream(&e.provider_id),
            Event::ProviderKeyUpdated(e) => provider_stream(&e.provider_id),
            Event::ProviderVerified(e) => provider_stream(&e.provider_id),
            Event::AuditRead(_) => AUDIT_STREAM.to_owned(),
            Event::UserSignedIn(e) => session_stream(&e.user_id),
            Event::UserSignedOut(e) => session_stream(&e.user_id),
            Event::AuditArchived(_) => ARCHIVE_STREAM.to_owned(),
        }
    }

    /// The payload alone, as stored in the `data` column.
    pub fn data(&self) -> Value {
        match serde_json::to_value(self) {
            Ok(Value::Object(mut m)) => m.remove("data").unwrap_or(Value::Null),
            _ => Value::Null,
        }
    }

    /// The key this event concerns, if any.
    pub fn key_id(&self) -> Option<&str> {
        match self {
            Event::KeyCreated(e) => Some(&e.key_id),
            Event::KeyUpdated(e) => Some(&e.key_id),
            Event::KeyUsed(e) => Some(&e.key_id),
            Event::KeyDenied(e) => Some(&e.key_id),
            Event::KeyExpired(e) => Some(&e.key_id),
            Event::KeyRotated(e) => Some(&e.key_id),
            Event::KeyDeleted(e) => Some(&e.key_id),
            Event::KeyNoticeSent(e) => Some(&e.key_id),
            _ => None,
        }
    }
}

/// The schema this build writes for a type name, or `None` for an unknown type.
pub fn current_schema(type_name: &str) -> Option<u16> {
    match type_name {
        "key.created" | "user.created" | "user.updated" => Some(2),
        t if EVENT_TYPES.contains(&t) => Some(1),
        _ => None,
    }
}

pub fn key_stream(key_id: &str) -> String {
    format!("key:{key_id}")
}
pub fn usage_stream(key_id: &str) -> String {
    format!("usage:{key_id}")
}
pub fn provider_stream(provider_id: &str) -> String {
    format!("provider:{provider_id}")
}
pub fn user_stream(user_id: &str) -> String {
    format!("user:{user_id}")
}
/// The stream of `audit.read`: who read the audit history, in one place.
pub const AUDIT_STREAM: &str = "audit";
/// The stream of `audit.archived`: the log's own life cycle.
pub const ARCHIVE_STREAM: &str = "archive";
/// Console sign-ins and sign-outs, on their own stream so that they never move the
/// version a command on the user (`user:<id>`) expects.
pub fn session_stream(user_id: &str) -> String {
    format!("session:{user_id}")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Admin,
    User,
    /// Reads everything an admin reads (keys, providers masked, users, logs, the audit
    /// history, exports, replays, checkpoints, proofs) and changes nothing.
    Auditor,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::User => "user",
            Role::Auditor => "auditor",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// List models.
    Read,
    /// The proxy endpoints.
    Chat,
    /// Chat plus the management API, acting as the owner.
    Full,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Chat => "chat",
            Scope::Full => "full",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    Openai,
    AzureOpenai,
    Anthropic,
    Gemini,
    Groq,
    OpenaiCompatible,
    /// Amazon Bedrock: requests signed with AWS Signature Version 4.
    Bedrock,
    /// Google Vertex AI: a service account's key exchanged for short-lived tokens.
    Vertex,
}

impl ProviderKind {
    /// Every kind, in the order of the enum (and of the snapshot's indexes).
    pub const ALL: [ProviderKind; 8] = [
        ProviderKind::Openai,
        ProviderKind::AzureOpenai,
        ProviderKind::Anthropic,
        ProviderKind::Gemini,
        ProviderKind::Groq,
        ProviderKind::OpenaiCompatible,
        ProviderKind::Bedrock,
        ProviderKind::Vertex,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Openai => "openai",
            ProviderKind::AzureOpenai => "azure_openai",
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::Gemini => "gemini",
            ProviderKind::Groq => "groq",
            ProviderKind::OpenaiCompatible => "openai_compatible",
            ProviderKind::Bedrock => "bedrock",
            ProviderKind::Vertex => "vertex",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub requests_per_minute: u32,
    pub burst: u32,
}

/// Requests and/or tokens per day or per month. A field left out is unlimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_day: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_month: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_day: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_month: Option<u64>,
}

// ---- users ----

/// A password's argon2id PHC string sealed under the keyring (AES-256-GCM, bound to the
/// user id), as `user.created` and `user.updated` carry it from schema 2 on. The PHC
/// string itself never enters the log again: an export, an audit read or a backup of the
/// log without the master keys holds nothing an attacker can run guesses against.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealedPassword {
    /// AES-256-GCM ciphertext of the PHC string with its tag, hex.
    pub ciphertext: String,
    /// The 96-bit nonce, hex.
    pub nonce: String,
    /// Which master key of the keyring sealed it.
    pub keyring_version: u32,
}

impl fmt::Debug for SealedPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SealedPassword(v{}, ..)", self.keyring_version)
    }
}

/// The plaintext argon2id PHC string a schema 1 user event held. Only the upcaster fills
/// it in, from a stored row; it is never serialised, so no new event carries it, and its
/// `Debug` prints nothing.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct LegacyPasswordHash(pub String);

impl fmt::Debug for LegacyPasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LegacyPasswordHash(<redacted>)")
    }
}

/// `user.created`, schema 2. Schema 1 held `password_hash` in plaintext; see
/// [`crate::upcast::frozen::UserCreatedV1`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UserCreated {
    pub user_id: String,
    pub username: String,
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<SealedPassword>,
    /// From a schema 1 row only (see [`LegacyPasswordHash`]).
    #[serde(default, skip_serializing)]
    pub legacy_password_hash: Option<LegacyPasswordHash>,
}

/// `user.updated`, schema 2; see [`UserCreated`] for the password.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UserUpdated {
    pub user_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<SealedPassword>,
    /// From a schema 1 row only (see [`LegacyPasswordHash`]).
    #[serde(default, skip_serializing)]
    pub legacy_password_hash: Option<LegacyPasswordHash>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UserDisabled {
    pub user_id: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UserEnabled {
    pub user_id: String,
}

// ---- keys ----

/// `key.created`, schema 2. Schema 1 bound a key to a single `provider_id` and had no
/// metadata; see [`crate::upcast::frozen::KeyCreatedV1`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeyCreated {
    pub key_id: String,
    pub name: String,
    pub owner_id: String,
    pub provider_ids: Vec<String>,
    /// blake3 of the secret, hex. The secret itself never enters the log.
    pub secret_hash: String,
    /// The first characters of the secret, for people to recognise it.
    pub prefix: String,
    #[serde(with = "time")]
    pub expires_at: Timestamp,
    pub scopes: Vec<Scope>,
    #[serde(default)]
    pub models: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<Quota>,
    #[serde(default)]
    pub ip_allowlist: Vec<String>,
    #[serde(default)]
    pub metadata: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotated_from: Option<String>,
}

/// `key.updated`: only the fields that changed. For the nullable limits, an absent field
/// is unchanged and `null` removes the limit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
pub struct KeyUpdated {
    pub key_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::option"
    )]
    pub expires_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<Scope>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<String>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "double_option"
    )]
    pub rate_limit: Option<Option<RateLimit>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "double_option"
    )]
    pub quota: Option<Option<Quota>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_allowlist: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Map<String, Value>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UsageOutcome {
    /// The upstream answered 2xx.
    Success,
    /// The upstream answered 4xx or 5xx.
    UpstreamError,
    /// The upstream could not be reached or reset the connection.
    UpstreamUnavailable,
    /// The upstream did not answer in time.
    UpstreamTimeout,
    /// The client went away before the response was complete.
    ClientClosed,
    /// Keyward refused the request after authenticating the key (a bad body, say).
    InvalidRequest,
}

impl UsageOutcome {
    pub fn is_error(self) -> bool {
        !matches!(self, UsageOutcome::Success)
    }
}

/// One proxied request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeyUsed {
    pub key_id: String,
    pub provider_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub endpoint: String,
    pub outcome: UsageOutcome,
    pub status: u16,
    pub latency_us: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_latency_us: Option<u64>,
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
    #[serde(default)]
    pub stream: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DenyReason {
    Expired,
    Deleted,
    OwnerDisabled,
    Scope,
    Provider,
    Model,
    Ip,
    RateLimit,
    Quota,
}

/// A known key refused. Throttled: `suppressed` counts the refusals of the same key and
/// reason that were folded into this one instead of being logged each.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeyDenied {
    pub key_id: String,
    pub reason: DenyReason,
    pub endpoint: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<String>,
    #[serde(default)]
    pub suppressed: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExpireReason {
    Manual,
    /// Its expiry time passed.
    Scheduled,
    /// Its rotation grace ended.
    Rotated,
    OwnerDisabled,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeyExpired {
    pub key_id: String,
    pub reason: ExpireReason,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeyRotated {
    /// The old key, on whose stream this event is.
    pub key_id: String,
    pub new_key_id: String,
    #[serde(with = "time")]
    pub grace_until: Timestamp,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeyDeleted {
    pub key_id: String,
}

/// What an expiry notice was about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoticeKind {
    /// The key stops working within the notice window.
    Expiring,
    /// The key has stopped working: its expiry passed or its rotation grace ended.
    Expired,
    /// A rotated key was still used during its grace, and the grace ends soon.
    GraceInUse,
}

/// An expiry notice for the key was sent to the webhook. Appended to the key's stream with
/// the version the notifier saw, before it is delivered, so that of several nodes one
/// sends it, once.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeyNoticeSent {
    pub key_id: String,
    pub kind: NoticeKind,
    /// When the key stops (or stopped) working, as the notice said.
    #[serde(with = "time")]
    pub ends_at: Timestamp,
}

// ---- providers ----

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProviderCreated {
    pub provider_id: String,
    pub name: String,
    pub kind: ProviderKind,
    pub base_url: String,
    #[serde(default)]
    pub config: Map<String, Value>,
    #[serde(default)]
    pub models: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
pub struct ProviderUpdated {
    pub provider_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<String>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProviderDeleted {
    pub provider_id: String,
    /// Deleted although active keys still used it.
    #[serde(default)]
    pub forced: bool,
}

/// A new credential, sealed: the plaintext never enters the log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProviderKeyUpdated {
    pub provider_id: String,
    /// AES-256-GCM ciphertext with its tag, hex.
    pub ciphertext: String,
    /// The 96-bit nonce, hex.
    pub nonce: String,
    /// Which master key of the keyring sealed it.
    pub keyring_version: u32,
    /// Keyed blake3 of the plaintext, hex: shows whether a credential returned to an
    /// earlier value without revealing it.
    pub fingerprint: String,
    pub last4: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProviderVerified {
    pub provider_id: String,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

// ---- reads of the audit history, console sessions ----

/// What part of the audit history was read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditReadKind {
    /// An NDJSON export (API, console or CLI).
    Export,
    /// The key table rebuilt as of a past time (`?as_of=`).
    AsOf,
    /// The key table replayed from the log (`keyward audit replay`).
    Replay,
    /// An inclusion or consistency proof.
    Proof,
    /// The log's checkpoint.
    Checkpoint,
}

impl AuditReadKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditReadKind::Export => "export",
            AuditReadKind::AsOf => "as_of",
            AuditReadKind::Replay => "replay",
            AuditReadKind::Proof => "proof",
            AuditReadKind::Checkpoint => "checkpoint",
        }
    }
}

/// `audit.read`: someone took a copy of, or a view into, the audit history. Appended
/// before the answer is served, so "who took a copy of the log" has an answer. The actor
/// is in the envelope; `user_id` repeats it for a user (absent for the command line).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditRead {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    pub kind: AuditReadKind,
    /// The filter as asked for (a query string, or the command's options); never a secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    /// The range read: events after this seq…
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_seq: Option<u64>,
    /// …up to and including this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_seq: Option<u64>,
}

/// `user.signed_in`: a console session began. `session` names the session without being
/// it: a keyed hash of the session token, 16 hex digits, the same in the matching
/// `user.signed_out`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UserSignedIn {
    pub user_id: String,
    pub session: String,
}

/// `user.signed_out`: a console session was ended by its user.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UserSignedOut {
    pub user_id: String,
    pub session: String,
}

/// `Option<Option<T>>` where an absent field is `None` and an explicit `null` is
/// `Some(None)`.
mod double_option {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer, T: Serialize>(
        v: &Option<Option<T>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match v {
            Some(inner) => inner.serialize(s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
        d: D,
    ) -> Result<Option<Option<T>>, D::Error> {
        Option::<T>::deserialize(d).map(Some)
    }
}

/// `audit.archived`: the usage events (`key.used`, `key.denied`) of seqs `first_seq` to
/// `last_seq` were written to sealed archive segments, read back and verified, and then
/// deleted from the hot store. Their hashes stay in the store (`pruned_hashes`), so the
/// chain and the Merkle tree still verify across the hole; every other event of the range
/// stays in the log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditArchived {
    pub first_seq: u64,
    pub last_seq: u64,
    /// How many usage events were deleted.
    pub pruned: u64,
    pub segments: Vec<ArchivedSegmentRef>,
}

/// One sealed segment an `audit.archived` names.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ArchivedSegmentRef {
    /// The object's name in the archive.
    pub name: String,
    pub first_seq: u64,
    pub last_seq: u64,
    /// The Merkle subtree root over the segment's events (hex): the tree's stored node.
    pub root: Hash32,
    /// The signed checkpoint (a C2SP signed note) the segment carries.
    pub checkpoint: String,
}
