//! The key table, and the index by secret hash that the proxy authenticates against.

use std::borrow::Borrow;
use std::collections::HashSet;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, LazyLock};

use keyward_events::time::Timestamp;
use keyward_events::{
    Envelope, Event, ExpireReason, Hash32, KeyCreated, KeyUpdated, NoticeKind, Quota, RateLimit,
    Scope,
};
use serde_json::{Map, Value};

/// A gateway key as the log describes it. Deleted keys stay, for audit.
///
/// The plain values are public fields; the strings, lists and the fields most keys never
/// set are read through methods, so that how they are stored can stay compact: a table
/// holds a million of these.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyRecord {
    pub(crate) key_id: Box<str>,
    pub(crate) name: Box<str>,
    /// Shared through the table's [`Interner`], as are the providers, scopes and creator:
    /// many keys have the same.
    pub(crate) owner_id: Arc<str>,
    pub(crate) provider_ids: Arc<[String]>,
    /// Parsed from `key.created`; [`Hash32::ZERO`] when the stored hex does not parse, and
    /// then the key is not in the auth index, so no secret can authenticate as it.
    pub secret_hash: Hash32,
    pub(crate) prefix: Box<str>,
    pub expires_at: Timestamp,
    pub(crate) scopes: Arc<[Scope]>,
    pub rate_limit: Option<RateLimit>,
    pub created_at: Timestamp,
    pub(crate) created_by: Arc<str>,
    pub updated_at: Timestamp,
    /// `None` when every setting is empty, so that equal records are equal field by field.
    pub(crate) settings: Option<Box<Settings>>,
    /// `None` until something happens to the key (or it was made by a rotation).
    pub(crate) history: Option<Box<History>>,
    /// The stream version of the last event on `key:<id>`. Usage is on `usage:<id>` and
    /// does not move it, so it is what a management command expects.
    pub version: u64,
}

/// The optional restrictions and labels of a key; most keys have none.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Settings {
    pub(crate) models: Vec<String>,
    pub(crate) quota: Option<Quota>,
    pub(crate) ip_allowlist: Vec<String>,
    pub(crate) metadata: Map<String, Value>,
}

impl Settings {
    /// Boxed, or `None` when all are empty.
    pub(crate) fn boxed(self) -> Option<Box<Settings>> {
        boxed_unless_default(self)
    }
}

/// `value` boxed, or `None` when it is its type's default: nothing set.
fn boxed_unless_default<T: Default + PartialEq>(value: T) -> Option<Box<T>> {
    (value != T::default()).then(|| Box::new(value))
}

/// What happened to a key after `key.created`, and the key it replaced; a live key that
/// was never rotated has none of it.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct History {
    pub(crate) rotated_from: Option<String>,
    pub(crate) rotated_to: Option<String>,
    pub(crate) grace_until: Option<Timestamp>,
    /// From the first `key.expired`.
    pub(crate) expired: Option<(ExpireReason, Timestamp)>,
    pub(crate) deleted_at: Option<Timestamp>,
    /// The expiry notices recorded for the key, each with the end it was about.
    pub(crate) notices: Vec<(NoticeKind, Timestamp)>,
}

impl History {
    /// Boxed, or `None` when nothing is set.
    pub(crate) fn boxed(self) -> Option<Box<History>> {
        boxed_unless_default(self)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyStatus {
    Active,
    Grace,
    Expired,
    Deleted,
}

impl KeyRecord {
    fn from_created(interner: &mut Interner, env: &Envelope, e: &KeyCreated) -> KeyRecord {
        KeyRecord {
            key_id: e.key_id.as_str().into(),
            name: e.name.as_str().into(),
            owner_id: interner.str(&e.owner_id),
            provider_ids: interner.ids(&e.provider_ids),
            secret_hash: Hash32::from_hex(&e.secret_hash).unwrap_or(Hash32::ZERO),
            prefix: e.prefix.as_str().into(),
            expires_at: e.expires_at,
            scopes: interner.scopes(&e.scopes),
            rate_limit: e.rate_limit,
            created_at: env.occurred_at,
            created_by: interner.str(&env.actor),
            updated_at: env.occurred_at,
            settings: Settings {
                models: e.models.clone(),
                quota: e.quota,
                ip_allowlist: e.ip_allowlist.clone(),
                metadata: e.metadata.clone(),
            }
            .boxed(),
            history: History {
                rotated_from: e.rotated_from.clone(),
                ..History::default()
            }
            .boxed(),
            version: env.stream_version,
        }
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn owner_id(&self) -> &str {
        &self.owner_id
    }

    /// In the order `key.created` gave them; the first is the one the proxy uses.
    pub fn provider_ids(&self) -> impl ExactSizeIterator<Item = &str> + Clone {
        self.provider_ids.iter().map(String::as_str)
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn scopes(&self) -> &[Scope] {
        &self.scopes
    }

    /// Empty: every model of the provider.
    pub fn models(&self) -> &[String] {
        self.settings.as_ref().map_or(&[], |s| &s.models)
    }

    pub fn quota(&self) -> Option<Quota> {
        self.settings.as_ref().and_then(|s| s.quota)
    }

    /// Empty: any address.
    pub fn ip_allowlist(&self) -> &[String] {
        self.settings.as_ref().map_or(&[], |s| &s.ip_allowlist)
    }

    pub fn metadata(&self) -> &Map<String, Value> {
        static EMPTY: LazyLock<Map<String, Value>> = LazyLock::new(Map::new);
        self.settings.as_ref().map_or(&EMPTY, |s| &s.metadata)
    }

    /// The actor of the `key.created` envelope.
    pub fn created_by(&self) -> &str {
        &self.created_by
    }

    pub fn rotated_from(&self) -> Option<&str> {
        self.history.as_ref()?.rotated_from.as_deref()
    }

    pub fn rotated_to(&self) -> Option<&str> {
        self.history.as_ref()?.rotated_to.as_deref()
    }

    pub fn grace_until(&self) -> Option<Timestamp> {
        self.history.as_ref()?.grace_until
    }

    /// The reason and time of the first `key.expired`.
    pub fn expired(&self) -> Option<(ExpireReason, Timestamp)> {
        self.history.as_ref()?.expired
    }

    pub fn deleted_at(&self) -> Option<Timestamp> {
        self.history.as_ref()?.deleted_at
    }

    /// The expiry notices recorded for the key, each with the end it was about.
    pub fn notices(&self) -> &[(NoticeKind, Timestamp)] {
        self.history.as_ref().map_or(&[], |h| &h.notices)
    }

    fn history_mut(&mut self) -> &mut History {
        self.history.get_or_insert_default()
    }

    /// When the key stops (or stopped) working: the time it was expired, or the end of its
    /// rotation grace if that comes before its expiry, or its expiry.
    pub fn ends_at(&self) -> Timestamp {
        if let Some((_, at)) = self.expired() {
            return at.min(self.expires_at);
        }
        match self.grace_until() {
            Some(g) if self.rotated_to().is_some() && g < self.expires_at => g,
            _ => self.expires_at,
        }
    }

    /// Deleted wins over everything, then any kind of expiry, then the rotation grace.
    pub fn status(&self, now: Timestamp) -> KeyStatus {
        if self.deleted_at().is_some() {
            return KeyStatus::Deleted;
        }
        if self.expired().is_some() || now >= self.expires_at {
            return KeyStatus::Expired;
        }
        if self.rotated_to().is_some() {
            return if self.in_grace_at(now) {
                KeyStatus::Grace
            } else {
                KeyStatus::Expired
            };
        }
        KeyStatus::Active
    }

    pub fn is_deleted(&self) -> bool {
        self.deleted_at().is_some()
    }

    /// Whether the key has been rotated and `at` falls before the end of its grace: a use
    /// then shows a client that has not switched to the new key yet.
    pub fn in_grace_at(&self, at: Timestamp) -> bool {
        self.rotated_to().is_some() && self.grace_until().is_some_and(|g| at < g)
    }

    /// `scopes` is `e.scopes` interned.
    fn apply_update(&mut self, e: &KeyUpdated, scopes: Option<Arc<[Scope]>>) {
        if let Some(name) = &e.name {
            self.name = name.as_str().into();
        }
        if let Some(expires_at) = e.expires_at {
            self.expires_at = expires_at;
        }
        if let Some(scopes) = scopes {
            self.scopes = scopes;
        }
        if let Some(rate_limit) = e.rate_limit {
            self.rate_limit = rate_limit;
        }
        if e.models.is_none()
            && e.quota.is_none()
            && e.ip_allowlist.is_none()
            && e.metadata.is_none()
        {
            return;
        }
        let s = self.settings.get_or_insert_default();
        if let Some(models) = &e.models {
            s.models.clone_from(models);
        }
        if let Some(quota) = e.quota {
            s.quota = quota;
        }
        if let Some(ips) = &e.ip_allowlist {
            s.ip_allowlist.clone_from(ips);
        }
        if let Some(metadata) = &e.metadata {
            s.metadata.clone_from(metadata);
        }
        if **s == Settings::default() {
            self.settings = None;
        }
    }
}

/// Every key by id, and the live ones' auth index by secret hash.
///
/// Both indexes hold the same `Arc`, hashed by a field of the record itself, so a key's id
/// and hash are stored once. A change takes the record out of both, so that
/// `Arc::make_mut` only copies it when a reader still holds the old version.
#[derive(Clone, Default)]
pub struct KeyTable {
    pub(crate) by_id: HashSet<ById>,
    pub(crate) by_hash: HashSet<ByHash>,
    pub(crate) interner: Interner,
}

impl KeyTable {
    pub fn get(&self, key_id: &str) -> Option<&Arc<KeyRecord>> {
        self.by_id.get(key_id).map(|k| &k.0)
    }

    /// The proxy's hot path. Deleted and expired keys are found too, so that a refusal can
    /// name the key and its reason.
    pub fn by_secret_hash(&self, h: &Hash32) -> Option<&Arc<KeyRecord>> {
        self.by_hash.get(h).map(|k| &k.0)
    }

    /// In no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<KeyRecord>> {
        self.by_id.iter().map(|k| &k.0)
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn by_owner<'a>(&'a self, owner_id: &'a str) -> impl Iterator<Item = &'a Arc<KeyRecord>> {
        self.iter().filter(move |k| k.owner_id() == owner_id)
    }

    pub fn using_provider<'a>(
        &'a self,
        provider_id: &'a str,
    ) -> impl Iterator<Item = &'a Arc<KeyRecord>> {
        self.iter()
            .filter(move |k| k.provider_ids().any(|p| p == provider_id))
    }

    /// Folds one key event; other events and events for unknown keys are ignored.
    pub fn apply(&mut self, env: &Envelope, event: &Event) {
        match event {
            Event::KeyCreated(e) => {
                let rec = KeyRecord::from_created(&mut self.interner, env, e);
                self.insert(Arc::new(rec));
            }
            Event::KeyUpdated(e) => {
                let scopes = e.scopes.as_deref().map(|s| self.interner.scopes(s));
                self.modify(&e.key_id, env, |k| k.apply_update(e, scopes));
            }
            Event::KeyExpired(e) => self.modify(&e.key_id, env, |k| {
                k.history_mut()
                    .expired
                    .get_or_insert((e.reason, env.occurred_at));
            }),
            Event::KeyRotated(e) => self.modify(&e.key_id, env, |k| {
                let h = k.history_mut();
                h.rotated_to = Some(e.new_key_id.clone());
                h.grace_until = Some(e.grace_until);
            }),
            Event::KeyDeleted(e) => self.modify(&e.key_id, env, |k| {
                k.history_mut().deleted_at.get_or_insert(env.occurred_at);
            }),
            // A notice is not a change to the key: its `updated_at` stays.
            Event::KeyNoticeSent(e) => {
                let updated_at = self.get(&e.key_id).map(|k| k.updated_at);
                self.modify(&e.key_id, env, |k| {
                    k.history_mut().notices.push((e.kind, e.ends_at));
                    if let Some(t) = updated_at {
                        k.updated_at = t;
                    }
                });
            }
            _ => {}
        }
    }

    fn insert(&mut self, rec: Arc<KeyRecord>) {
        if let Some(old) = self.by_id.take(rec.key_id()) {
            self.unindex_hash(&old.0);
        }
        self.index_hash(&rec);
        self.by_id.insert(ById(rec));
    }

    fn modify(&mut self, key_id: &str, env: &Envelope, f: impl FnOnce(&mut KeyRecord)) {
        let Some(ById(mut rec)) = self.by_id.take(key_id) else {
            return;
        };
        let indexed = self.unindex_hash(&rec);
        let k = Arc::make_mut(&mut rec);
        k.updated_at = env.occurred_at;
        f(k);
        k.version = env.stream_version;
        if indexed {
            self.index_hash(&rec);
        }
        self.by_id.insert(ById(rec));
    }

    /// Removes `rec` from the auth index if it is the record there; says whether it was.
    fn unindex_hash(&mut self, rec: &Arc<KeyRecord>) -> bool {
        let holds = self
            .by_hash
            .get(&rec.secret_hash)
            .is_some_and(|k| Arc::ptr_eq(&k.0, rec));
        if holds {
            self.by_hash.remove(&rec.secret_hash);
        }
        holds
    }

    /// Two keys never share a secret hash in practice; if they did, the first keeps it.
    fn index_hash(&mut self, rec: &Arc<KeyRecord>) {
        if rec.secret_hash != Hash32::ZERO && !self.by_hash.contains(&rec.secret_hash) {
            self.by_hash.insert(ByHash(Arc::clone(rec)));
        }
    }
}

impl PartialEq for KeyTable {
    /// Compares the records, not just their ids.
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len()
            && self.by_hash.len() == other.by_hash.len()
            && self
                .iter()
                .all(|k| other.get(k.key_id()).is_some_and(|o| **o == **k))
    }
}

impl fmt::Debug for KeyTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.iter().map(|k| (k.key_id(), k)))
            .finish()
    }
}

/// A record hashed and compared by its key id, so a set of them is a map by id.
#[derive(Clone)]
pub(crate) struct ById(pub(crate) Arc<KeyRecord>);

impl Borrow<str> for ById {
    fn borrow(&self) -> &str {
        self.0.key_id()
    }
}

impl Hash for ById {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.key_id().hash(state);
    }
}

impl PartialEq for ById {
    fn eq(&self, other: &Self) -> bool {
        self.0.key_id == other.0.key_id
    }
}

impl Eq for ById {}

/// A record hashed and compared by its secret hash.
#[derive(Clone)]
pub(crate) struct ByHash(pub(crate) Arc<KeyRecord>);

impl Borrow<Hash32> for ByHash {
    fn borrow(&self) -> &Hash32 {
        &self.0.secret_hash
    }
}

impl Hash for ByHash {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.secret_hash.hash(state);
    }
}

impl PartialEq for ByHash {
    fn eq(&self, other: &Self) -> bool {
        self.0.secret_hash == other.0.secret_hash
    }
}

impl Eq for ByHash {}

/// One shared copy of the values that many keys repeat: owners, creators, provider lists
/// and scope lists. A million keys of one owner hold one copy of its id.
///
/// It only grows, and holds what the log named: users, actors, and the provider and
/// scope lists that keys were given, not one entry per key. Equal values are equal
/// whether or not they were interned, so it is no part of a table's equality.
#[derive(Clone, Default)]
pub(crate) struct Interner {
    strs: HashSet<Arc<str>>,
    id_lists: HashSet<Arc<[String]>>,
    scope_lists: HashSet<Arc<[Scope]>>,
}

impl Interner {
    pub(crate) fn str(&mut self, s: &str) -> Arc<str> {
        intern(&mut self.strs, s)
    }

    pub(crate) fn ids(&mut self, ids: &[String]) -> Arc<[String]> {
        intern(&mut self.id_lists, ids)
    }

    pub(crate) fn scopes(&mut self, scopes: &[Scope]) -> Arc<[Scope]> {
        intern(&mut self.scope_lists, scopes)
    }
}

fn intern<T: Eq + Hash + ?Sized>(set: &mut HashSet<Arc<T>>, v: &T) -> Arc<T>
where
    Arc<T>: for<'a> From<&'a T>,
{
    if let Some(a) = set.get(v) {
        return Arc::clone(a);
    }
    let a = Arc::from(v);
    set.insert(Arc::clone(&a));
    a
}
