//! The key commands: create, change, expire, rotate and delete keys.

use std::sync::Arc;

use chrono::Utc;
use keyward_events::{
    Event, ExpectedVersion, ExpireReason, KeyCreated, KeyDeleted, KeyExpired, KeyRotated,
    KeyUpdated, NewEvent, Quota, RateLimit, Scope,
};
use keyward_projections::{KeyRecord, KeyStatus, State};
use serde_json::{Map, Value};

use super::{
    Actor, CommandError, Commands, Decided, KeyPolicy, Visibility, narrowing, new_key_id,
    user_claim,
};
use crate::crypto::Secret;
use crate::time::Timestamp;

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

impl Commands {
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

    /// Applies a change to a key that is still usable (active or in grace). Its owner may
    /// only narrow it ([`narrowing`]); an admin may also widen it.
    pub async fn update_key(
        &self,
        actor: &Actor,
        vis: Visibility<'_>,
        patch: KeyUpdated,
    ) -> Result<Arc<KeyRecord>, CommandError> {
        let key_id = patch.key_id.clone();
        let decided = decide_update(&self.live.read(), self.policy, vis, patch, Utc::now())?;
        self.submit(self.unit(actor, decided)).await?;
        self.reread(&key_id)
    }

    /// Expires a key at once; the record stays.
    pub async fn expire_key(
        &self,
        actor: &Actor,
        vis: Visibility<'_>,
        key_id: &str,
    ) -> Result<Arc<KeyRecord>, CommandError> {
        let decided = decide_expire(&self.live.read(), vis, key_id, Utc::now())?;
        self.submit(self.unit(actor, decided)).await?;
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

/// The rules on a change to `key`, decided against the version the change will be
/// appended at: no expiry past the key's creation plus the maximum lifetime (for
/// anyone), and nothing that widens the key unless the caller sees every key (an admin).
fn check_key_change(
    policy: KeyPolicy,
    key: &KeyRecord,
    vis: Visibility<'_>,
    patch: &KeyUpdated,
) -> Result<(), CommandError> {
    if let Some(at) = patch.expires_at {
        let max = policy.max_lifetime;
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

/// Decides a change to a key at `now`: the `key.updated` against the key's version, or
/// NotFound (a key the caller may not see), Conflict (a key no longer usable),
/// InvalidField (an expiry past the maximum lifetime) or NeedsAdmin (an owner widening it).
pub fn decide_update(
    state: &State,
    policy: KeyPolicy,
    vis: Visibility<'_>,
    patch: KeyUpdated,
    now: Timestamp,
) -> Result<Decided, CommandError> {
    let key = visible_key(state, &patch.key_id, vis)?;
    match key.status(now) {
        KeyStatus::Active | KeyStatus::Grace => {}
        s => {
            return Err(CommandError::Conflict(format!(
                "key {} is {} and can no longer be changed",
                key.key_id(),
                status_word(s)
            )));
        }
    }
    check_key_change(policy, &key, vis, &patch)?;
    Ok(vec![(
        Event::KeyUpdated(patch),
        ExpectedVersion::Exact(key.version),
    )])
}

/// Decides a manual expiry of a key at `now`: the `key.expired` against the key's version,
/// or NotFound (a key the caller may not see) or Conflict (a key already expired or deleted).
pub fn decide_expire(
    state: &State,
    vis: Visibility<'_>,
    key_id: &str,
    now: Timestamp,
) -> Result<Decided, CommandError> {
    let key = visible_key(state, key_id, vis)?;
    match key.status(now) {
        KeyStatus::Active | KeyStatus::Grace => {}
        s => {
            return Err(CommandError::Conflict(format!(
                "key {key_id} is already {}",
                status_word(s)
            )));
        }
    }
    Ok(vec![(
        Event::KeyExpired(KeyExpired {
            key_id: key_id.to_owned(),
            reason: ExpireReason::Manual,
        }),
        ExpectedVersion::Exact(key.version),
    )])
}

#[cfg(test)]
mod tests {
    use chrono::Duration;
    use keyward_events::Role;

    use super::super::testing::{key, provider, state, t0, user};
    use super::*;

    fn keys() -> State {
        state(&[
            user("usr_a", "alice", Role::User),
            provider("prv_1", "openai"),
            key("key_1", "usr_a", "prv_1"),
        ])
    }

    fn rate_limit(requests_per_minute: u32, burst: u32) -> Option<Option<RateLimit>> {
        Some(Some(RateLimit {
            requests_per_minute,
            burst,
        }))
    }

    #[test]
    fn an_owner_narrowing_their_key_updates_it_at_its_version() {
        let patch = KeyUpdated {
            key_id: "key_1".to_owned(),
            name: Some("renamed".to_owned()),
            rate_limit: rate_limit(30, 5),
            expires_at: Some(t0() + Duration::days(10)),
            ..KeyUpdated::default()
        };
        let decided = decide_update(
            &keys(),
            KeyPolicy::default(),
            Visibility::Owner("usr_a"),
            patch.clone(),
            t0() + Duration::hours(1),
        )
        .unwrap();
        assert_eq!(
            decided,
            vec![(Event::KeyUpdated(patch), ExpectedVersion::Exact(1))]
        );
    }

    #[test]
    fn an_admin_may_widen_a_key_up_to_its_maximum_lifetime() {
        let patch = KeyUpdated {
            key_id: "key_1".to_owned(),
            rate_limit: rate_limit(600, 50),
            expires_at: Some(t0() + Duration::days(180)),
            ..KeyUpdated::default()
        };
        let decided = decide_update(
            &keys(),
            KeyPolicy::default(),
            Visibility::All,
            patch.clone(),
            t0(),
        )
        .unwrap();
        assert_eq!(
            decided,
            vec![(Event::KeyUpdated(patch), ExpectedVersion::Exact(1))]
        );
    }

    #[test]
    fn an_owner_widening_their_key_needs_an_admin() {
        let patch = KeyUpdated {
            key_id: "key_1".to_owned(),
            rate_limit: rate_limit(61, 5),
            ..KeyUpdated::default()
        };
        let err = decide_update(
            &keys(),
            KeyPolicy::default(),
            Visibility::Owner("usr_a"),
            patch,
            t0(),
        )
        .unwrap_err();
        assert!(
            matches!(
                &err,
                CommandError::NeedsAdmin { field: "rate_limit.requests_per_minute", detail }
                    if detail == "only an admin may raise the rate limit above 60 requests per minute"
            ),
            "{err:?}"
        );
    }

    #[test]
    fn no_one_moves_an_expiry_past_the_maximum_lifetime() {
        let patch = KeyUpdated {
            key_id: "key_1".to_owned(),
            expires_at: Some(t0() + Duration::days(181)),
            ..KeyUpdated::default()
        };
        let err =
            decide_update(&keys(), KeyPolicy::default(), Visibility::All, patch, t0()).unwrap_err();
        assert!(
            matches!(
                &err,
                CommandError::InvalidField { field: "expires_at", detail }
                    if detail == &format!(
                        "a key lives at most 180 days from its creation ({}); rotate it to renew it",
                        crate::time::format(&t0())
                    )
            ),
            "{err:?}"
        );
    }

    #[test]
    fn another_users_key_is_not_found_and_an_expired_one_is_not_changed() {
        let patch = KeyUpdated {
            key_id: "key_1".to_owned(),
            name: Some("mine now".to_owned()),
            ..KeyUpdated::default()
        };
        let err = decide_update(
            &keys(),
            KeyPolicy::default(),
            Visibility::Owner("usr_b"),
            patch.clone(),
            t0(),
        )
        .unwrap_err();
        assert!(
            matches!(&err, CommandError::NotFound(what) if what == "key key_1"),
            "{err:?}"
        );
        let err = decide_update(
            &keys(),
            KeyPolicy::default(),
            Visibility::All,
            patch,
            t0() + Duration::days(31),
        )
        .unwrap_err();
        assert!(
            matches!(&err, CommandError::Conflict(why)
                if why == "key key_1 is expired and can no longer be changed"),
            "{err:?}"
        );
    }

    #[test]
    fn expiring_a_key_expires_it_manually_once() {
        let decided = decide_expire(&keys(), Visibility::Owner("usr_a"), "key_1", t0()).unwrap();
        assert_eq!(
            decided,
            vec![(
                Event::KeyExpired(KeyExpired {
                    key_id: "key_1".to_owned(),
                    reason: ExpireReason::Manual,
                }),
                ExpectedVersion::Exact(1),
            )]
        );
        let err = decide_expire(&keys(), Visibility::All, "key_1", t0() + Duration::days(30))
            .unwrap_err();
        assert!(
            matches!(&err, CommandError::Conflict(why) if why == "key key_1 is already expired"),
            "{err:?}"
        );
        let err = decide_expire(&keys(), Visibility::All, "key_2", t0()).unwrap_err();
        assert!(
            matches!(&err, CommandError::NotFound(what) if what == "key key_2"),
            "{err:?}"
        );
    }
}
