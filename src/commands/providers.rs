//! The provider commands: create, change, replace the credential of, record a check of and
//! delete providers.

use std::sync::Arc;

use chrono::Utc;
use keyward_events::{
    Event, ExpectedVersion, ProviderCreated, ProviderDeleted, ProviderKeyUpdated, ProviderKind,
    ProviderUpdated, ProviderVerified,
};
use keyward_projections::{KeyRecord, KeyStatus, ProviderRecord, State};
use serde_json::{Map, Value};

use super::{Actor, CommandError, Commands, Decided, new_provider_id};
use crate::crypto::{Keyring, ProviderSecret};
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
        name_free(&self.live.read(), name, except)
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
        let id = patch.provider_id.clone();
        let decided = decide_update(&self.live.read(), patch)?;
        self.submit(self.unit(actor, decided)).await?;
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
        let decided = decide_delete(&self.live.read(), provider_id, force, Utc::now())?;
        if !decided.is_empty() {
            self.submit(self.unit(actor, decided)).await?;
        }
        self.reread_provider(provider_id)
    }
}

/// Refuses a name that another provider that is not deleted already has.
fn name_free(state: &State, name: &str, except: Option<&str>) -> Result<(), CommandError> {
    match state.providers.by_name(name) {
        Some(p) if except != Some(p.provider_id.as_str()) => Err(CommandError::Conflict(format!(
            "a provider named {name:?} already exists: {}",
            p.provider_id
        ))),
        _ => Ok(()),
    }
}

/// Decides a change to a provider's name, base URL, config or models: the
/// `provider.updated` against the provider's version, or NotFound, or Conflict (a deleted
/// provider, or a name another provider has).
pub fn decide_update(state: &State, patch: ProviderUpdated) -> Result<Decided, CommandError> {
    let p = state
        .providers
        .get(&patch.provider_id)
        .ok_or_else(|| CommandError::NotFound(format!("provider {}", patch.provider_id)))?;
    if p.is_deleted() {
        return Err(CommandError::Conflict(format!(
            "provider {} was deleted and can no longer be changed",
            patch.provider_id
        )));
    }
    if let Some(name) = &patch.name {
        name_free(state, name, Some(&p.provider_id))?;
    }
    let version = p.version;
    Ok(vec![(
        Event::ProviderUpdated(patch),
        ExpectedVersion::Exact(version),
    )])
}

/// Decides the deletion of a provider at `now`: the `provider.deleted` against its
/// version, nothing for a provider already deleted, NotFound, or ConflictWith the keys
/// that still work and use it unless `force`.
pub fn decide_delete(
    state: &State,
    provider_id: &str,
    force: bool,
    now: Timestamp,
) -> Result<Decided, CommandError> {
    let p = state
        .providers
        .get(provider_id)
        .ok_or_else(|| CommandError::NotFound(format!("provider {provider_id}")))?;
    if p.is_deleted() {
        return Ok(Vec::new());
    }
    let mut dependents: Vec<Value> = state
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
    dependents.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    if !dependents.is_empty() && !force {
        return Err(CommandError::ConflictWith {
            detail: format!(
                "{} active key(s) still use provider {provider_id}; expire or delete them, or delete with ?force=true",
                dependents.len()
            ),
            extra: serde_json::json!({ "keys": dependents }),
        });
    }
    Ok(vec![(
        Event::ProviderDeleted(ProviderDeleted {
            provider_id: provider_id.to_owned(),
            forced: !dependents.is_empty(),
        }),
        ExpectedVersion::Exact(p.version),
    )])
}

#[cfg(test)]
mod tests {
    use chrono::Duration;
    use keyward_events::{KeyExpired, Role};

    use super::super::testing::{key, provider, state, t0, user};
    use super::*;

    fn providers() -> Vec<Event> {
        vec![
            user("usr_a", "alice", Role::User),
            provider("prv_1", "openai"),
            provider("prv_2", "other"),
            key("key_1", "usr_a", "prv_1"),
        ]
    }

    #[test]
    fn an_update_applies_at_the_providers_version() {
        let patch = ProviderUpdated {
            provider_id: "prv_1".to_owned(),
            name: Some("openai-eu".to_owned()),
            base_url: Some("https://eu.api.openai.com/v1".to_owned()),
            ..ProviderUpdated::default()
        };
        let decided = decide_update(&state(&providers()), patch.clone()).unwrap();
        assert_eq!(
            decided,
            vec![(Event::ProviderUpdated(patch), ExpectedVersion::Exact(1))]
        );
        // Its own name is no conflict.
        let same = ProviderUpdated {
            provider_id: "prv_1".to_owned(),
            name: Some("openai".to_owned()),
            ..ProviderUpdated::default()
        };
        assert!(decide_update(&state(&providers()), same).is_ok());
    }

    #[test]
    fn an_update_to_a_taken_name_or_a_deleted_provider_conflicts() {
        let patch = ProviderUpdated {
            provider_id: "prv_2".to_owned(),
            name: Some("openai".to_owned()),
            ..ProviderUpdated::default()
        };
        let err = decide_update(&state(&providers()), patch).unwrap_err();
        assert!(
            matches!(&err, CommandError::Conflict(why)
                if why == "a provider named \"openai\" already exists: prv_1"),
            "{err:?}"
        );
        let mut events = providers();
        events.push(Event::ProviderDeleted(ProviderDeleted {
            provider_id: "prv_2".to_owned(),
            forced: false,
        }));
        let patch = ProviderUpdated {
            provider_id: "prv_2".to_owned(),
            models: Some(vec!["gpt-4o".to_owned()]),
            ..ProviderUpdated::default()
        };
        let err = decide_update(&state(&events), patch).unwrap_err();
        assert!(
            matches!(&err, CommandError::Conflict(why)
                if why == "provider prv_2 was deleted and can no longer be changed"),
            "{err:?}"
        );
        let err = decide_update(
            &state(&events),
            ProviderUpdated {
                provider_id: "prv_9".to_owned(),
                ..ProviderUpdated::default()
            },
        )
        .unwrap_err();
        assert!(
            matches!(&err, CommandError::NotFound(what) if what == "provider prv_9"),
            "{err:?}"
        );
    }

    #[test]
    fn a_provider_in_use_is_deleted_only_by_force() {
        let s = state(&providers());
        let err = decide_delete(&s, "prv_1", false, t0()).unwrap_err();
        match &err {
            CommandError::ConflictWith { detail, extra } => {
                assert_eq!(
                    detail,
                    "1 active key(s) still use provider prv_1; expire or delete them, or delete with ?force=true"
                );
                assert_eq!(
                    extra,
                    &serde_json::json!({ "keys": [{
                        "id": "key_1",
                        "name": "key_1 name",
                        "owner_id": "usr_a",
                        "status": "active",
                    }] })
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            decide_delete(&s, "prv_1", true, t0()).unwrap(),
            vec![(
                Event::ProviderDeleted(ProviderDeleted {
                    provider_id: "prv_1".to_owned(),
                    forced: true,
                }),
                ExpectedVersion::Exact(1),
            )]
        );
        let err = decide_delete(&s, "prv_9", true, t0()).unwrap_err();
        assert!(
            matches!(&err, CommandError::NotFound(what) if what == "provider prv_9"),
            "{err:?}"
        );
    }

    #[test]
    fn a_provider_whose_keys_no_longer_work_is_deleted_once() {
        let mut events = providers();
        events.push(Event::KeyExpired(KeyExpired {
            key_id: "key_1".to_owned(),
            reason: keyward_events::ExpireReason::Manual,
        }));
        let s = state(&events);
        let deleted = vec![(
            Event::ProviderDeleted(ProviderDeleted {
                provider_id: "prv_1".to_owned(),
                forced: false,
            }),
            ExpectedVersion::Exact(1),
        )];
        assert_eq!(decide_delete(&s, "prv_1", false, t0()).unwrap(), deleted);
        // A key past its expiry no longer holds its provider either.
        let later = t0() + Duration::days(30);
        assert_eq!(
            decide_delete(&state(&providers()), "prv_1", false, later).unwrap(),
            deleted
        );
        events.push(deleted[0].0.clone());
        assert!(
            decide_delete(&state(&events), "prv_1", false, t0())
                .unwrap()
                .is_empty()
        );
    }
}
