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

use keyward_events::{
    ExpireReason, KeyDeleted, KeyExpired, KeyRotated, KeyUpdated, ProviderCreated, ProviderDeleted,
    ProviderKeyUpdated, ProviderKind, ProviderUpdated, ProviderVerified, UserDisabled, UserEnabled,
    UserUpdated,
};
use keyward_projections::{KeyRecord, KeyStatus, ProviderRecord, State, UserRecord};

use crate::crypto::{Keyring, PasswordHash, ProviderSecret, Secret};
use crate::live::Live;
use crate::store::appender::Appender;
use crate::store::postgres::{PostgresStore, SessionLock};
use crate::store::{AppendError, StoreError};
use crate::time::Timestamp;

/// What a provider answered a live check of its credential (`providers::check` asks).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckResult {
    /// The provider accepted the credential (a 2xx).
    pub ok: bool,
    /// The provider's HTTP status; `None` when it could not be reached.
    pub status: Option<u16>,
    /// The provider's reason for a refusal, or a summary of a success; never the credential.
    pub detail: Option<String>,
}

impl CheckResult {
    /// The credential itself was refused: 401 or 403.
    pub fn refused(&self) -> bool {
        matches!(self.status, Some(401 | 403))
    }
}

pub mod narrowing;

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
    /// A conflict with the objects in the way, e.g. the keys that still use a provider.
    #[error("{detail}")]
    ConflictWith { detail: String, extra: Value },
    /// A change that widens a key, asked for by its owner: only an admin may.
    #[error("{field}: {detail}")]
    NeedsAdmin { field: &'static str, detail: String },
    /// The owner already has as many keys as one user may.
    #[error("{0}")]
    KeyLimit(String),
}

/// The limits on keys that every command holds to, whoever asks.
#[derive(Clone, Copy, Debug)]
pub struct KeyPolicy {
    /// No key lives past its creation plus this, however often it is changed; a rotation
    /// starts a new key and so a new lifetime.
    pub max_lifetime: chrono::Duration,
    /// Keys one user may hold that are not deleted; expired keys count until deleted.
    pub max_keys_per_user: usize,
}

impl Default for KeyPolicy {
    fn default() -> Self {
        KeyPolicy {
            max_lifetime: chrono::Duration::days(180),
            max_keys_per_user: 1000,
        }
    }
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
    /// Held from a check that no stream version covers (a name is free, a user is still
    /// enabled) to the commit of what was decided on it.
    claims: Arc<Claims>,
    /// Seals password hashes before they enter the log.
    keyring: Keyring,
    policy: KeyPolicy,
}

/// Serialises the commands that decide on the same name or the same user, on this node
/// and, on PostgreSQL, across nodes.
///
/// Two rules need it, because no stream version covers them: a username is unique
/// regardless of case (and a provider name among providers not deleted), and a key is
/// never created for a disabled owner while disabling an owner expires every key they
/// have. Stream versions cannot see either: `alice` and `Alice` are two new streams, and a
/// new key is a new stream that the disable's unit never names. So each such command takes
/// the claim on its name (`username:alice`) or user (`user:usr_…`), then, on PostgreSQL,
/// folds every event other nodes committed meanwhile, decides on that state, appends,
/// waits for the commit and only then lets the claim go. Whoever takes the claim next sees
/// that commit: the second `alice` finds the first, a disable finds the key created just
/// before it (and expires it in its unit), a key created just after a disable finds its
/// owner disabled.
struct Claims {
    /// On this node: one of these per claim name's hash.
    stripes: Vec<tokio::sync::Mutex<()>>,
    /// On PostgreSQL: the store's advisory locks, and a bound on how many of them this
    /// node holds at once, each on a pooled connection the appends also need.
    cluster: Option<(Arc<PostgresStore>, tokio::sync::Semaphore)>,
}

const CLAIM_STRIPES: usize = 64;
/// Claims held at once by one node on PostgreSQL: a quarter of the store's pool.
const CLUSTER_CLAIMS: usize = 2;

/// A held claim. [`Commands::release`] gives it back.
struct Claim<'a> {
    _stripe: tokio::sync::MutexGuard<'a, ()>,
    _permit: Option<tokio::sync::SemaphorePermit<'a>>,
    lock: Option<SessionLock>,
}

impl Claim<'_> {
    async fn release(self) {
        if let Some(lock) = self.lock {
            lock.release().await;
        }
    }
}

impl Commands {
    pub fn new(live: Arc<Live>, appender: Appender, keyring: Keyring) -> Self {
        Commands {
            live,
            appender,
            claims: Arc::new(Claims {
                stripes: (0..CLAIM_STRIPES)
                    .map(|_| tokio::sync::Mutex::new(()))
                    .collect(),
                cluster: None,
            }),
            keyring,
            policy: KeyPolicy::default(),
        }
    }

    /// Makes the claims hold across every node of a shared PostgreSQL log.
    pub fn with_cluster(mut self, store: Arc<PostgresStore>) -> Self {
        self.claims = Arc::new(Claims {
            stripes: (0..CLAIM_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            cluster: Some((store, tokio::sync::Semaphore::new(CLUSTER_CLAIMS))),
        });
        self
    }

    /// Takes the claim on `name` (see [`Claims`]) and brings the live state up to every
    /// event committed before it was granted.
    async fn claim(&self, name: &str) -> Result<Claim<'_>, CommandError> {
        let stripe = blake3::hash(name.as_bytes()).as_bytes()[0] as usize % CLAIM_STRIPES;
        let guard = self.claims.stripes[stripe].lock().await;
        let Some((store, permits)) = &self.claims.cluster else {
            return Ok(Claim {
                _stripe: guard,
                _permit: None,
                lock: None,
            });
        };
        let permit = permits
            .acquire()
            .await
            .map_err(|_| CommandError::Append(AppendError::Closed))?;
        let lock = store
            .claim_lock(name)
            .await
            .map_err(|e| CommandError::Append(AppendError::Store(e)))?;
        let claim = Claim {
            _stripe: guard,
            _permit: Some(permit),
            lock: Some(lock),
        };
        if let Err(e) = self.live.catch_up().await {
            claim.release().await;
            return Err(CommandError::Append(AppendError::Store(
                StoreError::Unavailable(format!("catching up before a claimed decision: {e}")),
            )));
        }
        Ok(claim)
    }

    /// Runs `decide_and_append` under the claim on `name`, and gives the claim back
    /// whatever it returns.
    async fn claimed<T>(
        &self,
        name: &str,
        decide_and_append: impl std::future::Future<Output = Result<T, CommandError>>,
    ) -> Result<T, CommandError> {
        let claim = self.claim(name).await?;
        let out = decide_and_append.await;
        claim.release().await;
        out
    }

    /// These commands with the configured key limits.
    pub fn with_key_policy(mut self, policy: KeyPolicy) -> Self {
        self.policy = policy;
        self
    }

    pub fn key_policy(&self) -> KeyPolicy {
        self.policy
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
        password_hash: Option<PasswordHash>,
    ) -> (NewEvent, String) {
        let user_id = new_user_id();
        let ev = Event::UserCreated(UserCreated {
            user_id: user_id.clone(),
            username: username.to_owned(),
            role,
            password: password_hash.map(|h| self.keyring.seal_password(&user_id, &h)),
            legacy_password_hash: None,
        });
        (self.event(actor, &ev, ExpectedVersion::NoStream), user_id)
    }

    /// The `user.updated` that sets a user's password hash, not yet appended.
    pub fn password_set(
        &self,
        actor: &Actor,
        user_id: &str,
        version: u64,
        password_hash: PasswordHash,
    ) -> NewEvent {
        let ev = Event::UserUpdated(UserUpdated {
            user_id: user_id.to_owned(),
            username: None,
            role: None,
            password: Some(self.keyring.seal_password(user_id, &password_hash)),
            legacy_password_hash: None,
        });
        self.event(actor, &ev, ExpectedVersion::Exact(version))
    }

    pub async fn submit(&self, unit: Vec<NewEvent>) -> Result<Vec<Envelope>, CommandError> {
        Ok(self.appender.submit(unit).await?)
    }

    /// Appends one event that decides nothing (a read of the audit history, a console
    /// sign-in) and waits for its commit: it expects no stream version.
    pub async fn record(&self, actor: &Actor, event: &Event) -> Result<Envelope, CommandError> {
        let mut envs = self
            .submit(vec![self.event(actor, event, ExpectedVersion::Any)])
            .await?;
        envs.pop().ok_or_else(|| {
            CommandError::Append(AppendError::Store(StoreError::Unavailable(
                "the append returned no event".to_owned(),
            )))
        })
    }
}

/// The claim a decision about a user takes (see [`Claims`]).
fn user_claim(user_id: &str) -> String {
    format!("user:{user_id}")
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
        .filter(|k| vis.admits(k.owner_id()))
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

    /// Refuses a new key for `owner_id` when they already hold as many keys (not deleted)
    /// as one user may. An admin creating a key for a user is held to it too: the limit
    /// bounds what one user's keys cost in memory and in every read of their history.
    fn check_key_count(&self, owner_id: &str) -> Result<(), CommandError> {
        let max = self.policy.max_keys_per_user;
        let held = self
            .live
            .read()
            .keys
            .by_owner(owner_id)
            .filter(|k| !k.is_deleted())
            .count();
        if held >= max {
            return Err(CommandError::KeyLimit(format!(
                "user {owner_id} already holds {held} keys, the most one user may (max-keys-per-user is {max}); delete keys that are no longer needed (expired keys count until deleted)"
            )));
        }
        Ok(())
    }

    pub async fn create_key(
        &self,
        actor: &Actor,
        spec: NewKey,
    ) -> Result<(Arc<KeyRecord>, Secret), CommandError> {
        // Under the owner's claim, so that a disable on another node cannot miss it.
        let claim = user_claim(&spec.owner_id);
        self.claimed(&claim, async {
            self.check_key_refs(&spec.owner_id, &spec.provider_ids)?;
            self.check_key_count(&spec.owner_id)?;
            let (ev, key_id, secret) = self.key_created(actor, spec);
            self.submit(vec![ev]).await?;
            let key = self.live.read().keys.get(&key_id).cloned();
            key.map(|k| (k, secret))
                .ok_or_else(|| CommandError::NotFound(format!("key {key_id}")))
        })
        .await
    }

    /// The rules on a change to `key`, decided against the version the change will be
    /// appended at: no expiry past the key's creation plus the maximum lifetime (for
    /// anyone), and nothing that widens the key unless the caller sees every key (an admin).
    fn check_key_change(
        &self,
        key: &KeyRecord,
        vis: Visibility<'_>,
        patch: &KeyUpdated,
    ) -> Result<(), CommandError> {
        if let Some(at) = patch.expires_at {
            let max = self.policy.max_lifetime;
            // The same minute of slack as at creation, for clocks and request latency.
            if at > key.created_at + max + chrono::Duration::minutes(1) {
                return Err(CommandError::InvalidField {
                    field: "expires_at",
                    detail: format!(
                        "a key lives at most {} days from its creation ({}); rotate it to renew it",
                        max.num_days(),
                        crate::time::format(&key.created_at)
                    ),
                });
            }
        }
        if matches!(vis, Visibility::Owner(_))
            && let Some(w) = narrowing::first_widening(key, patch)
        {
            return Err(CommandError::NeedsAdmin {
                field: w.field,
                detail: w.detail,
            });
        }
        Ok(())
    }

    /// Applies a change to a key that is still usable (active or in grace). Its owner may
    /// only narrow it ([`narrowing`]); an admin may also widen it.
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
                    key.key_id(),
                    status_word(s)
                )));
            }
        }
        self.check_key_change(&key, vis, &patch)?;
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
    /// until `grace_until`. Its owner may give the new key at most the old one's lifetime.
    /// Both events commit together or not at all; of two concurrent rotations one wins and
    /// the other conflicts on the old key's stream version.
    pub async fn rotate_key(
        &self,
        actor: &Actor,
        vis: Visibility<'_>,
        key_id: &str,
        grace_until: Timestamp,
        new_expires_at: Timestamp,
    ) -> Result<(Arc<KeyRecord>, Arc<KeyRecord>, Secret), CommandError> {
        // The new key is the owner's: under their claim, as for a created key.
        let owner = visible_key(&self.live.read(), key_id, vis)?
            .owner_id()
            .to_owned();
        self.claimed(&user_claim(&owner), async {
            let old = visible_key(&self.live.read(), key_id, vis)?;
            match old.status(Utc::now()) {
                KeyStatus::Active => {}
                KeyStatus::Grace => {
                    return Err(CommandError::Conflict(format!(
                        "key {key_id} was already rotated to {}",
                        old.rotated_to().unwrap_or("another key")
                    )));
                }
                s => {
                    return Err(CommandError::Conflict(format!(
                        "key {key_id} is {} and cannot be rotated",
                        status_word(s)
                    )));
                }
            }
            // A rotation renews a key; its owner renews it for as long as it lived, an admin for
            // up to the maximum lifetime. Otherwise rotating would lengthen a short lifetime an
            // admin chose.
            let span = (old.expires_at - old.created_at).max(chrono::Duration::hours(1));
            if matches!(vis, Visibility::Owner(_))
                && new_expires_at > Utc::now() + span + chrono::Duration::minutes(1)
            {
                return Err(CommandError::NeedsAdmin {
                    field: "expires_at",
                    detail: format!(
                        "the new key may live at most as long as this one ({} days); only an admin may renew it for longer",
                        span.num_days()
                    ),
                });
            }
            let provider_ids: Vec<String> = old.provider_ids().map(str::to_owned).collect();
            self.check_key_refs(old.owner_id(), &provider_ids)?;
            // The old key stays (expired after its grace) until deleted, so a rotation adds one.
            self.check_key_count(old.owner_id())?;
            let (created, new_id, secret) = self.key_created(
                actor,
                NewKey {
                    name: old.name().to_owned(),
                    owner_id: old.owner_id().to_owned(),
                    provider_ids,
                    expires_at: new_expires_at,
                    scopes: old.scopes().to_vec(),
                    models: old.models().to_vec(),
                    rate_limit: old.rate_limit,
                    quota: old.quota(),
                    ip_allowlist: old.ip_allowlist().to_vec(),
                    metadata: old.metadata().clone(),
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
        })
        .await
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

// ---------- providers ----------

/// A provider to create, validated by the caller's layer.
#[derive(Clone, Debug)]
pub struct NewProvider {
    pub name: String,
    pub kind: ProviderKind,
    pub base_url: String,
    pub config: Map<String, Value>,
    pub models: Vec<String>,
}

/// Whether a key still works, and so depends on its provider.
pub fn key_is_live(k: &KeyRecord, now: Timestamp) -> bool {
    matches!(k.status(now), KeyStatus::Active | KeyStatus::Grace)
}

impl Commands {
    fn verified_event(provider_id: &str, check: &CheckResult) -> Event {
        Event::ProviderVerified(ProviderVerified {
            provider_id: provider_id.to_owned(),
            ok: check.ok,
            status: check.status,
            detail: check.detail.clone(),
        })
    }

    fn key_updated_event(keyring: &Keyring, provider_id: &str, secret: &ProviderSecret) -> Event {
        let sealed = keyring.seal(provider_id, secret);
        Event::ProviderKeyUpdated(ProviderKeyUpdated {
            provider_id: provider_id.to_owned(),
            ciphertext: sealed.ciphertext,
            nonce: sealed.nonce,
            keyring_version: sealed.keyring_version,
            fingerprint: sealed.fingerprint,
            last4: sealed.last4,
        })
    }

    /// A provider that exists and is not deleted; NotFound or Conflict otherwise.
    fn live_provider(&self, provider_id: &str) -> Result<Arc<ProviderRecord>, CommandError> {
        let p = self
            .live
            .read()
            .providers
            .get(provider_id)
            .cloned()
            .ok_or_else(|| CommandError::NotFound(format!("provider {provider_id}")))?;
        if p.is_deleted() {
            return Err(CommandError::Conflict(format!(
                "provider {provider_id} was deleted and can no longer be changed"
            )));
        }
        Ok(p)
    }

    /// Refuses a name that another provider that is not deleted already has.
    pub fn check_provider_name(
        &self,
        name: &str,
        except: Option<&str>,
    ) -> Result<(), CommandError> {
        let state = self.live.read();
        match state.providers.by_name(name) {
            Some(p) if except != Some(p.provider_id.as_str()) => {
                Err(CommandError::Conflict(format!(
                    "a provider named {name:?} already exists: {}",
                    p.provider_id
                )))
            }
            _ => Ok(()),
        }
    }

    fn reread_provider(&self, provider_id: &str) -> Result<Arc<ProviderRecord>, CommandError> {
        self.live
            .read()
            .providers
            .get(provider_id)
            .cloned()
            .ok_or_else(|| CommandError::NotFound(format!("provider {provider_id}")))
    }

    /// Creates a provider with its sealed credential, and the result of the live check
    /// that preceded it, in one unit.
    pub async fn create_provider(
        &self,
        actor: &Actor,
        spec: NewProvider,
        secret: &ProviderSecret,
        keyring: &Keyring,
        check: Option<&CheckResult>,
    ) -> Result<Arc<ProviderRecord>, CommandError> {
        let claim = self.claim(&format!("provider-name:{}", spec.name)).await?;
        let out = self
            .create_provider_claimed(actor, spec, secret, keyring, check)
            .await;
        claim.release().await;
        out
    }

    async fn create_provider_claimed(
        &self,
        actor: &Actor,
        spec: NewProvider,
        secret: &ProviderSecret,
        keyring: &Keyring,
        check: Option<&CheckResult>,
    ) -> Result<Arc<ProviderRecord>, CommandError> {
        self.check_provider_name(&spec.name, None)?;
        let provider_id = new_provider_id();
        let created = Event::ProviderCreated(ProviderCreated {
            provider_id: provider_id.clone(),
            name: spec.name,
            kind: spec.kind,
            base_url: spec.base_url,
            config: spec.config,
            models: spec.models,
        });
        let mut unit = vec![
            self.event(actor, &created, ExpectedVersion::NoStream),
            self.event(
                actor,
                &Self::key_updated_event(keyring, &provider_id, secret),
                ExpectedVersion::Exact(1),
            ),
        ];
        if let Some(check) = check {
            unit.push(self.event(
                actor,
                &Self::verified_event(&provider_id, check),
                ExpectedVersion::Exact(2),
            ));
        }
        self.submit(unit).await?;
        self.reread_provider(&provider_id)
    }

    /// Changes a provider's name, base URL, config or models.
    pub async fn update_provider(
        &self,
        actor: &Actor,
        patch: ProviderUpdated,
    ) -> Result<Arc<ProviderRecord>, CommandError> {
        let claim = match &patch.name {
            Some(name) => Some(self.claim(&format!("provider-name:{name}")).await?),
            None => None,
        };
        let out = self.update_provider_claimed(actor, patch).await;
        if let Some(c) = claim {
            c.release().await;
        }
        out
    }

    async fn update_provider_claimed(
        &self,
        actor: &Actor,
        patch: ProviderUpdated,
    ) -> Result<Arc<ProviderRecord>, CommandError> {
        let p = self.live_provider(&patch.provider_id)?;
        if let Some(name) = &patch.name {
            self.check_provider_name(name, Some(&p.provider_id))?;
        }
        let id = patch.provider_id.clone();
        let ev = self.event(
            actor,
            &Event::ProviderUpdated(patch),
            ExpectedVersion::Exact(p.version),
        );
        self.submit(vec![ev]).await?;
        self.reread_provider(&id)
    }

    /// Replaces the credential; keys using the provider use the new one from the commit on.
    pub async fn replace_provider_credential(
        &self,
        actor: &Actor,
        provider_id: &str,
        secret: &ProviderSecret,
        keyring: &Keyring,
        check: Option<&CheckResult>,
    ) -> Result<Arc<ProviderRecord>, CommandError> {
        let p = self.live_provider(provider_id)?;
        let mut unit = vec![self.event(
            actor,
            &Self::key_updated_event(keyring, provider_id, secret),
            ExpectedVersion::Exact(p.version),
        )];
        if let Some(check) = check {
            unit.push(self.event(
                actor,
                &Self::verified_event(provider_id, check),
                ExpectedVersion::Exact(p.version + 1),
            ));
        }
        self.submit(unit).await?;
        self.reread_provider(provider_id)
    }

    /// Records the result of a live check of the provider's current credential.
    /// `version` is the provider's version when the check started: a credential replaced
    /// meanwhile makes this a conflict rather than a result recorded against the wrong one.
    pub async fn record_provider_check(
        &self,
        actor: &Actor,
        provider_id: &str,
        version: u64,
        check: &CheckResult,
    ) -> Result<Arc<ProviderRecord>, CommandError> {
        self.live_provider(provider_id)?;
        let ev = self.event(
            actor,
            &Self::verified_event(provider_id, check),
            ExpectedVersion::Exact(version),
        );
        self.submit(vec![ev]).await?;
        self.reread_provider(provider_id)
    }

    /// Deletes a provider. While keys that still work use it, this is refused with the list
    /// of those keys, unless `force`. Deleting a deleted provider writes nothing.
    pub async fn delete_provider(
        &self,
        actor: &Actor,
        provider_id: &str,
        force: bool,
    ) -> Result<Arc<ProviderRecord>, CommandError> {
        let (p, dependents) = {
            let state = self.live.read();
            let p = state
                .providers
                .get(provider_id)
                .cloned()
                .ok_or_else(|| CommandError::NotFound(format!("provider {provider_id}")))?;
            let now = Utc::now();
            let mut deps: Vec<Value> = state
                .keys
                .using_provider(provider_id)
                .filter(|k| key_is_live(k, now))
                .map(|k| {
                    serde_json::json!({
                        "id": k.key_id(),
                        "name": k.name(),
                        "owner_id": k.owner_id(),
                        "status": k.status(now),
                    })
                })
                .collect();
            deps.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
            (p, deps)
        };
        if p.is_deleted() {
            return Ok(p);
        }
        if !dependents.is_empty() && !force {
            return Err(CommandError::ConflictWith {
                detail: format!(
                    "{} active key(s) still use provider {provider_id}; expire or delete them, or delete with ?force=true",
                    dependents.len()
                ),
                extra: serde_json::json!({ "keys": dependents }),
            });
        }
        let ev = Event::ProviderDeleted(ProviderDeleted {
            provider_id: provider_id.to_owned(),
            forced: !dependents.is_empty(),
        });
        self.submit(vec![self.event(
            actor,
            &ev,
            ExpectedVersion::Exact(p.version),
        )])
        .await?;
        self.reread_provider(provider_id)
    }
}

// ---------- users ----------

/// A change to a user. `None` leaves a field as it is.
#[derive(Clone, Debug, Default)]
pub struct UserPatch {
    pub role: Option<Role>,
    pub disabled: Option<bool>,
    /// An argon2id PHC string, sealed under the keyring before it is recorded.
    pub password_hash: Option<PasswordHash>,
}

/// How often a user change is decided again when a key of theirs changed in between
/// (the sweeper expiring one, say).
const USER_UPDATE_ATTEMPTS: usize = 3;

impl Commands {
    fn reread_user(&self, user_id: &str) -> Result<Arc<UserRecord>, CommandError> {
        self.live
            .read()
            .users
            .get(user_id)
            .cloned()
            .ok_or_else(|| CommandError::NotFound(format!("user {user_id}")))
    }

    /// Creates a user. Usernames are unique regardless of case, so that `Admin` cannot
    /// pass for `admin`.
    pub async fn create_user(
        &self,
        actor: &Actor,
        username: &str,
        role: Role,
        password_hash: Option<PasswordHash>,
    ) -> Result<Arc<UserRecord>, CommandError> {
        // Usernames are ASCII (letters, digits, `.`, `_`, `-`): this is their case fold.
        let claim = format!("username:{}", username.to_ascii_lowercase());
        self.claimed(&claim, async {
            let taken = self
                .live
                .read()
                .users
                .iter()
                .find(|u| u.username.eq_ignore_ascii_case(username))
                .map(|u| u.username.clone());
            if let Some(existing) = taken {
                return Err(CommandError::Conflict(format!(
                    "the username {existing:?} is taken"
                )));
            }
            let (ev, user_id) = self.user_created(actor, username, role, password_hash);
            self.submit(vec![ev]).await?;
            self.reread_user(&user_id)
        })
        .await
    }

    /// Changes a user's role, password or disabled state. Disabling also expires every
    /// key of theirs that still works, with reason `owner_disabled`, in the same unit.
    /// Enabling again does not bring expired keys back. An actor may not disable or
    /// demote themselves: that is how the last admin locks everyone out.
    /// Returns the user and the keys that were expired.
    pub async fn update_user(
        &self,
        actor: &Actor,
        user_id: &str,
        patch: UserPatch,
    ) -> Result<(Arc<UserRecord>, Vec<String>), CommandError> {
        if actor.id == user_id {
            if patch.disabled == Some(true) {
                return Err(CommandError::Conflict(
                    "you cannot disable yourself; ask another admin".to_owned(),
                ));
            }
            // To any other role, the auditor's too: it changes nothing either.
            if patch.role.is_some_and(|r| r != Role::Admin)
                && self.reread_user(user_id)?.role == Role::Admin
            {
                return Err(CommandError::Conflict(
                    "you cannot remove your own admin role; ask another admin".to_owned(),
                ));
            }
        }
        // Under the user's claim: a key created for them on another node either commits
        // before this decision (and is expired with the rest) or finds them disabled.
        self.claimed(&user_claim(user_id), async {
            let mut attempt = 0;
            loop {
                attempt += 1;
                let (unit, expired) = self.decide_user_update(actor, user_id, &patch)?;
                if unit.is_empty() {
                    return Ok((self.reread_user(user_id)?, Vec::new()));
                }
                match self.submit(unit).await {
                    Ok(_) => return Ok((self.reread_user(user_id)?, expired)),
                    Err(CommandError::Append(AppendError::Conflict { .. }))
                        if attempt < USER_UPDATE_ATTEMPTS => {}
                    Err(e) => return Err(e),
                }
            }
        })
        .await
    }

    fn decide_user_update(
        &self,
        actor: &Actor,
        user_id: &str,
        patch: &UserPatch,
    ) -> Result<(Vec<NewEvent>, Vec<String>), CommandError> {
        let state = self.live.read();
        let user = state
            .users
            .get(user_id)
            .cloned()
            .ok_or_else(|| CommandError::NotFound(format!("user {user_id}")))?;
        let mut version = user.version;
        let mut unit = Vec::new();
        let mut expired = Vec::new();
        let role = patch.role.filter(|r| *r != user.role);
        if role.is_some() || patch.password_hash.is_some() {
            unit.push(
                self.event(
                    actor,
                    &Event::UserUpdated(UserUpdated {
                        user_id: user_id.to_owned(),
                        username: None,
                        role,
                        password: patch
                            .password_hash
                            .as_ref()
                            .map(|h| self.keyring.seal_password(user_id, h)),
                        legacy_password_hash: None,
                    }),
                    ExpectedVersion::Exact(version),
                ),
            );
            version += 1;
        }
        match patch.disabled {
            Some(true) if !user.disabled => {
                unit.push(self.event(
                    actor,
                    &Event::UserDisabled(UserDisabled {
                        user_id: user_id.to_owned(),
                    }),
                    ExpectedVersion::Exact(version),
                ));
                let now = Utc::now();
                let mut keys: Vec<&Arc<KeyRecord>> = state
                    .keys
                    .by_owner(user_id)
                    .filter(|k| key_is_live(k, now))
                    .collect();
                keys.sort_by(|a, b| a.key_id().cmp(b.key_id()));
                for k in keys {
                    unit.push(self.event(
                        actor,
                        &Event::KeyExpired(KeyExpired {
                            key_id: k.key_id().to_owned(),
                            reason: ExpireReason::OwnerDisabled,
                        }),
                        ExpectedVersion::Exact(k.version),
                    ));
                    expired.push(k.key_id().to_owned());
                }
            }
            Some(false) if user.disabled => {
                unit.push(self.event(
                    actor,
                    &Event::UserEnabled(UserEnabled {
                        user_id: user_id.to_owned(),
                    }),
                    ExpectedVersion::Exact(version),
                ));
            }
            _ => {}
        }
        Ok((unit, expired))
    }
}
