//! Commands: decide from the live state, then append. Each command is one atomic unit
//! handed to the appender, and its response waits for the durable commit.

use std::sync::Arc;

use chrono::Utc;
use keyward_events::{Envelope, Event, ExpectedVersion, NewEvent};
use serde_json::Value;
use ulid::Ulid;

use crate::crypto::Keyring;
use crate::live::Live;
use crate::store::appender::Appender;
use crate::store::postgres::{PostgresStore, SessionLock};
use crate::store::{AppendError, StoreError};

pub mod keys;
pub mod providers;
pub mod users;

pub use keys::NewKey;
pub use providers::{CheckResult, NewProvider, key_is_live};
pub use users::UserPatch;

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

/// What a decision appends: each event with the stream version it expects to follow.
pub type Decided = Vec<(Event, ExpectedVersion)>;

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

    /// The unit that appends what a decision decided, each event against its version.
    fn unit(&self, actor: &Actor, decided: Decided) -> Vec<NewEvent> {
        decided
            .iter()
            .map(|(event, expected)| self.event(actor, event, *expected))
            .collect()
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

#[cfg(test)]
pub(crate) mod testing {
    //! Projection state for the decision tests, folded from events as the log would.

    use std::collections::HashMap;

    use chrono::TimeZone;
    use keyward_events::{
        Event, ExpectedVersion, KeyCreated, NewEvent, ProviderCreated, ProviderKind, RateLimit,
        Role, Scope, UserCreated,
    };
    use keyward_projections::State;

    use crate::time::Timestamp;

    /// 2026-01-01T00:00:00Z: when the events of [`state`] happened.
    pub fn t0() -> Timestamp {
        chrono::Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
    }

    /// The state after `events`, each appended at [`t0`] by `usr_admin`.
    pub fn state(events: &[Event]) -> State {
        let mut state = State::default();
        let mut versions: HashMap<String, u64> = HashMap::new();
        for (i, ev) in events.iter().enumerate() {
            let new = NewEvent::new(ev, ExpectedVersion::Any, t0(), "usr_admin", None);
            let version = versions.entry(new.stream.clone()).or_insert(0);
            *version += 1;
            let env = new.seal(i as u64 + 1, *version, state.head.hash);
            state.apply(&env).unwrap();
        }
        state
    }

    pub fn user(user_id: &str, username: &str, role: Role) -> Event {
        Event::UserCreated(UserCreated {
            user_id: user_id.to_owned(),
            username: username.to_owned(),
            role,
            password: None,
            legacy_password_hash: None,
        })
    }

    pub fn provider(provider_id: &str, name: &str) -> Event {
        Event::ProviderCreated(ProviderCreated {
            provider_id: provider_id.to_owned(),
            name: name.to_owned(),
            kind: ProviderKind::Openai,
            base_url: "https://api.openai.com/v1".to_owned(),
            config: Default::default(),
            models: Vec::new(),
        })
    }

    /// A key of `owner_id` on `provider_id` with the `chat` scope, 60 requests per minute
    /// (burst 5), expiring 30 days after [`t0`].
    pub fn key(key_id: &str, owner_id: &str, provider_id: &str) -> Event {
        Event::KeyCreated(KeyCreated {
            key_id: key_id.to_owned(),
            name: format!("{key_id} name"),
            owner_id: owner_id.to_owned(),
            provider_ids: vec![provider_id.to_owned()],
            secret_hash: "00".repeat(32),
            prefix: "kw_test".to_owned(),
            expires_at: t0() + chrono::Duration::days(30),
            scopes: vec![Scope::Chat],
            models: Vec::new(),
            rate_limit: Some(RateLimit {
                requests_per_minute: 60,
                burst: 5,
            }),
            quota: None,
            ip_allowlist: Vec::new(),
            metadata: Default::default(),
            rotated_from: None,
        })
    }
}
