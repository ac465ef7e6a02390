//! Upstream providers and their sealed credentials.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use keyward_events::time::Timestamp;
use keyward_events::{Envelope, Event, ProviderKind, ProviderUpdated};
use serde_json::{Map, Value};

/// The provider's credential as `provider.key_updated` recorded it: only ciphertext and a
/// fingerprint, never the plaintext.
#[derive(Clone, PartialEq)]
pub struct SealedCredential {
    /// AES-256-GCM ciphertext with its tag, hex.
    pub ciphertext: String,
    /// The 96-bit nonce, hex.
    pub nonce: String,
    pub keyring_version: u32,
    pub fingerprint: String,
    pub last4: String,
    pub updated_at: Timestamp,
}

impl fmt::Debug for SealedCredential {
    // The ciphertext is not secret, but it is long and says nothing to a reader of a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedCredential")
            .field("keyring_version", &self.keyring_version)
            .field("fingerprint", &self.fingerprint)
            .field("last4", &self.last4)
            .field("updated_at", &self.updated_at)
            .finish_non_exhaustive()
    }
}

/// The result of the last live check of the credential.
#[derive(Clone, Debug, PartialEq)]
pub struct Verification {
    pub ok: bool,
    pub status: Option<u16>,
    pub detail: Option<String>,
    pub at: Timestamp,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ProviderRecord {
    pub provider_id: String,
    pub name: String,
    pub kind: ProviderKind,
    pub base_url: String,
    pub config: Map<String, Value>,
    pub models: Vec<String>,
    pub credential: Option<SealedCredential>,
    pub verification: Option<Verification>,
    pub created_at: Timestamp,
    /// The time of the last event on the provider's stream, a verification included.
    pub updated_at: Timestamp,
    pub deleted_at: Option<Timestamp>,
    /// The stream version of the last event on `provider:<id>`.
    pub version: u64,
}

impl ProviderRecord {
    pub fn is_deleted(&self) -> bool {
        self.deleted_at.is_some()
    }

    fn apply_update(&mut self, e: &ProviderUpdated) {
        if let Some(name) = &e.name {
            self.name.clone_from(name);
        }
        if let Some(base_url) = &e.base_url {
            self.base_url.clone_from(base_url);
        }
        if let Some(config) = &e.config {
            self.config.clone_from(config);
        }
        if let Some(models) = &e.models {
            self.models.clone_from(models);
        }
    }
}

/// Every provider by id, deleted ones included.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Providers {
    pub(crate) by_id: HashMap<String, Arc<ProviderRecord>>,
}

impl Providers {
    pub fn get(&self, provider_id: &str) -> Option<&Arc<ProviderRecord>> {
        self.by_id.get(provider_id)
    }

    /// In no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<ProviderRecord>> {
        self.by_id.values()
    }

    /// The provider that is not deleted and has this name. Commands keep names unique; if
    /// the log says otherwise, the earliest created wins.
    pub fn by_name(&self, name: &str) -> Option<&Arc<ProviderRecord>> {
        self.iter()
            .filter(|p| !p.is_deleted() && p.name == name)
            .min_by(|a, b| (a.created_at, &a.provider_id).cmp(&(b.created_at, &b.provider_id)))
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Folds one provider event; other events and events for unknown providers are ignored.
    pub fn apply(&mut self, env: &Envelope, event: &Event) {
        let at = env.occurred_at;
        match event {
            Event::ProviderCreated(e) => {
                let rec = ProviderRecord {
                    provider_id: e.provider_id.clone(),
                    name: e.name.clone(),
                    kind: e.kind,
                    base_url: e.base_url.clone(),
                    config: e.config.clone(),
                    models: e.models.clone(),
                    credential: None,
                    verification: None,
                    created_at: at,
                    updated_at: at,
                    deleted_at: None,
                    version: env.stream_version,
                };
                self.by_id.insert(e.provider_id.clone(), Arc::new(rec));
            }
            Event::ProviderUpdated(e) => {
                self.modify(&e.provider_id, env, |p| p.apply_update(e));
            }
            Event::ProviderKeyUpdated(e) => self.modify(&e.provider_id, env, |p| {
                p.credential = Some(SealedCredential {
                    ciphertext: e.ciphertext.clone(),
                    nonce: e.nonce.clone(),
                    keyring_version: e.keyring_version,
                    fingerprint: e.fingerprint.clone(),
                    last4: e.last4.clone(),
                    updated_at: at,
                });
            }),
            Event::ProviderVerified(e) => self.modify(&e.provider_id, env, |p| {
                p.verification = Some(Verification {
                    ok: e.ok,
                    status: e.status,
                    detail: e.detail.clone(),
                    at,
                });
            }),
            Event::ProviderDeleted(e) => self.modify(&e.provider_id, env, |p| {
                p.deleted_at.get_or_insert(at);
            }),
            _ => {}
        }
    }

    fn modify(&mut self, provider_id: &str, env: &Envelope, f: impl FnOnce(&mut ProviderRecord)) {
        if let Some(rec) = self.by_id.get_mut(provider_id) {
            let p = Arc::make_mut(rec);
            f(p);
            p.updated_at = env.occurred_at;
            p.version = env.stream_version;
        }
    }
}
