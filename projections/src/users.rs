//! Users of the management API, and the owners of keys.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use keyward_events::time::Timestamp;
use keyward_events::{Envelope, Event, LegacyPasswordHash, Role, SealedPassword};

/// A user's password as the log recorded it: sealed under the keyring (every password set
/// since schema 2), or the plaintext PHC string of a schema 1 event. The projection never
/// opens a sealed one; sign-in does, with the keyring (`src/crypto.rs`).
#[derive(Clone, PartialEq, Eq)]
pub enum StoredPassword {
    Sealed(SealedPassword),
    Legacy(String),
}

impl StoredPassword {
    /// Bytes that change whenever a new password is set (a new nonce and ciphertext, or a
    /// new salt), for tagging a session with the password it signed in with.
    pub fn identity(&self) -> &str {
        match self {
            StoredPassword::Sealed(s) => &s.ciphertext,
            StoredPassword::Legacy(phc) => phc,
        }
    }
}

impl fmt::Debug for StoredPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoredPassword::Sealed(s) => write!(f, "Sealed({s:?})"),
            StoredPassword::Legacy(_) => f.write_str("Legacy(<redacted>)"),
        }
    }
}

fn stored(
    sealed: &Option<SealedPassword>,
    legacy: &Option<LegacyPasswordHash>,
) -> Option<StoredPassword> {
    match (sealed, legacy) {
        (Some(s), _) => Some(StoredPassword::Sealed(s.clone())),
        (None, Some(l)) => Some(StoredPassword::Legacy(l.0.clone())),
        (None, None) => None,
    }
}

#[derive(Clone, PartialEq)]
pub struct UserRecord {
    pub user_id: String,
    pub username: String,
    pub role: Role,
    /// Never printed: see the `Debug` impl.
    pub password: Option<StoredPassword>,
    pub disabled: bool,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// The stream version of the last event on `user:<id>`.
    pub version: u64,
}

impl fmt::Debug for UserRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserRecord")
            .field("user_id", &self.user_id)
            .field("username", &self.username)
            .field("role", &self.role)
            .field("password", &self.password.as_ref().map(|_| Redacted))
            .field("disabled", &self.disabled)
            .field("created_at", &self.created_at)
            .field("updated_at", &self.updated_at)
            .field("version", &self.version)
            .finish()
    }
}

struct Redacted;

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Every user by id, and by username.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Users {
    pub(crate) by_id: HashMap<String, Arc<UserRecord>>,
    /// username → user id
    pub(crate) by_username: HashMap<String, String>,
}

impl Users {
    pub fn get(&self, user_id: &str) -> Option<&Arc<UserRecord>> {
        self.by_id.get(user_id)
    }

    /// Disabled users are found too; the caller decides what disabled means for it.
    pub fn by_username(&self, username: &str) -> Option<&Arc<UserRecord>> {
        self.by_username
            .get(username)
            .and_then(|id| self.by_id.get(id))
    }

    /// In no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<UserRecord>> {
        self.by_id.values()
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Folds one user event; other events and events for unknown users are ignored.
    pub fn apply(&mut self, env: &Envelope, event: &Event) {
        match event {
            Event::UserCreated(e) => {
                if let Some(old) = self.by_id.get(&e.user_id) {
                    let old_name = old.username.clone();
                    self.unindex_username(&old_name, &e.user_id);
                }
                let rec = UserRecord {
                    user_id: e.user_id.clone(),
                    username: e.username.clone(),
                    role: e.role,
                    password: stored(&e.password, &e.legacy_password_hash),
                    disabled: false,
                    created_at: env.occurred_at,
                    updated_at: env.occurred_at,
                    version: env.stream_version,
                };
                self.by_username
                    .insert(e.username.clone(), e.user_id.clone());
                self.by_id.insert(e.user_id.clone(), Arc::new(rec));
            }
            Event::UserUpdated(e) => {
                let Some(rec) = self.by_id.get_mut(&e.user_id) else {
                    return;
                };
                let u = Arc::make_mut(rec);
                let mut renamed_from = None;
                if let Some(username) = &e.username
                    && *username != u.username
                {
                    renamed_from = Some(std::mem::replace(&mut u.username, username.clone()));
                }
                if let Some(role) = e.role {
                    u.role = role;
                }
                if let Some(p) = stored(&e.password, &e.legacy_password_hash) {
                    u.password = Some(p);
                }
                u.updated_at = env.occurred_at;
                u.version = env.stream_version;
                if let Some(old_name) = renamed_from {
                    let new_name = u.username.clone();
                    self.unindex_username(&old_name, &e.user_id);
                    self.by_username.insert(new_name, e.user_id.clone());
                }
            }
            Event::UserDisabled(e) => self.set_disabled(&e.user_id, env, true),
            Event::UserEnabled(e) => self.set_disabled(&e.user_id, env, false),
            _ => {}
        }
    }

    fn set_disabled(&mut self, user_id: &str, env: &Envelope, disabled: bool) {
        if let Some(rec) = self.by_id.get_mut(user_id) {
            let u = Arc::make_mut(rec);
            u.disabled = disabled;
            u.updated_at = env.occurred_at;
            u.version = env.stream_version;
        }
    }

    /// Drops `username` from the index if it still points at `user_id`; after a rename,
    /// another user may have taken the name since.
    fn unindex_username(&mut self, username: &str, user_id: &str) {
        if self
            .by_username
            .get(username)
            .is_some_and(|id| id == user_id)
        {
            self.by_username.remove(username);
        }
    }
}
