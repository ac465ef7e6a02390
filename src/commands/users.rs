//! The user commands: create users and change their role, password or disabled state.

use std::sync::Arc;

use chrono::Utc;
use keyward_events::{
    Event, ExpectedVersion, ExpireReason, KeyExpired, NewEvent, Role, SealedPassword, UserCreated,
    UserDisabled, UserEnabled, UserUpdated,
};
use keyward_projections::{KeyRecord, State, UserRecord};

use super::{Actor, CommandError, Commands, Decided, key_is_live, new_user_id, user_claim};
use crate::crypto::PasswordHash;
use crate::store::AppendError;
use crate::time::Timestamp;

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
}

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
            username_free(&self.live.read(), username)?;
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
        // Under the user's claim: a key created for them on another node either commits
        // before this decision (and is expired with the rest) or finds them disabled.
        self.claimed(&user_claim(user_id), async {
            let mut attempt = 0;
            loop {
                attempt += 1;
                let (decided, expired) = decide_update(
                    &self.live.read(),
                    &actor.id,
                    user_id,
                    &patch,
                    |h| self.keyring.seal_password(user_id, h),
                    Utc::now(),
                )?;
                if decided.is_empty() {
                    return Ok((self.reread_user(user_id)?, Vec::new()));
                }
                match self.submit(self.unit(actor, decided)).await {
                    Ok(_) => return Ok((self.reread_user(user_id)?, expired)),
                    Err(CommandError::Append(AppendError::Conflict { .. }))
                        if attempt < USER_UPDATE_ATTEMPTS => {}
                    Err(e) => return Err(e),
                }
            }
        })
        .await
    }
}

/// Refuses a username another user has, regardless of case.
fn username_free(state: &State, username: &str) -> Result<(), CommandError> {
    match state
        .users
        .iter()
        .find(|u| u.username.eq_ignore_ascii_case(username))
    {
        Some(existing) => Err(CommandError::Conflict(format!(
            "the username {:?} is taken",
            existing.username
        ))),
        None => Ok(()),
    }
}

/// Decides a change to a user by `actor_id` at `now`: a `user.updated` for a new role or
/// password (`seal` seals the password hash), then a `user.disabled` with a `key.expired`
/// (`owner_disabled`) for each key of theirs that still works, or a `user.enabled`; nothing
/// when nothing changes. Refused with NotFound, or Conflict when the actor would disable
/// themselves or give up their own admin role. Also returns the keys it expires.
pub fn decide_update(
    state: &State,
    actor_id: &str,
    user_id: &str,
    patch: &UserPatch,
    seal: impl Fn(&PasswordHash) -> SealedPassword,
    now: Timestamp,
) -> Result<(Decided, Vec<String>), CommandError> {
    if actor_id == user_id && patch.disabled == Some(true) {
        return Err(CommandError::Conflict(
            "you cannot disable yourself; ask another admin".to_owned(),
        ));
    }
    let user = state
        .users
        .get(user_id)
        .ok_or_else(|| CommandError::NotFound(format!("user {user_id}")))?;
    // To any other role, the auditor's too: it changes nothing either.
    if actor_id == user_id
        && patch.role.is_some_and(|r| r != Role::Admin)
        && user.role == Role::Admin
    {
        return Err(CommandError::Conflict(
            "you cannot remove your own admin role; ask another admin".to_owned(),
        ));
    }
    let mut version = user.version;
    let mut decided = Vec::new();
    let mut expired = Vec::new();
    let role = patch.role.filter(|r| *r != user.role);
    if role.is_some() || patch.password_hash.is_some() {
        decided.push((
            Event::UserUpdated(UserUpdated {
                user_id: user_id.to_owned(),
                username: None,
                role,
                password: patch.password_hash.as_ref().map(&seal),
                legacy_password_hash: None,
            }),
            ExpectedVersion::Exact(version),
        ));
        version += 1;
    }
    match patch.disabled {
        Some(true) if !user.disabled => {
            decided.push((
                Event::UserDisabled(UserDisabled {
                    user_id: user_id.to_owned(),
                }),
                ExpectedVersion::Exact(version),
            ));
            let mut keys: Vec<&Arc<KeyRecord>> = state
                .keys
                .by_owner(user_id)
                .filter(|k| key_is_live(k, now))
                .collect();
            keys.sort_by(|a, b| a.key_id().cmp(b.key_id()));
            for k in keys {
                decided.push((
                    Event::KeyExpired(KeyExpired {
                        key_id: k.key_id().to_owned(),
                        reason: ExpireReason::OwnerDisabled,
                    }),
                    ExpectedVersion::Exact(k.version),
                ));
                expired.push(k.key_id().to_owned());
            }
        }
        Some(false) if user.disabled => {
            decided.push((
                Event::UserEnabled(UserEnabled {
                    user_id: user_id.to_owned(),
                }),
                ExpectedVersion::Exact(version),
            ));
        }
        _ => {}
    }
    Ok((decided, expired))
}

#[cfg(test)]
mod tests {
    use chrono::Duration;

    use super::super::testing::{key, provider, state, t0, user};
    use super::*;

    fn users() -> State {
        state(&[
            user("usr_admin", "admin", Role::Admin),
            user("usr_a", "alice", Role::User),
            provider("prv_1", "openai"),
            key("key_2", "usr_a", "prv_1"),
            key("key_1", "usr_a", "prv_1"),
            key("key_9", "usr_admin", "prv_1"),
        ])
    }

    fn no_password(_: &PasswordHash) -> SealedPassword {
        unreachable!("no password in these patches")
    }

    #[test]
    fn disabling_a_user_expires_their_working_keys_in_the_same_unit() {
        let patch = UserPatch {
            role: Some(Role::Auditor),
            disabled: Some(true),
            password_hash: None,
        };
        let (decided, expired) =
            decide_update(&users(), "usr_admin", "usr_a", &patch, no_password, t0()).unwrap();
        let expire = |key_id: &str| {
            (
                Event::KeyExpired(KeyExpired {
                    key_id: key_id.to_owned(),
                    reason: ExpireReason::OwnerDisabled,
                }),
                ExpectedVersion::Exact(1),
            )
        };
        assert_eq!(
            decided,
            vec![
                (
                    Event::UserUpdated(UserUpdated {
                        user_id: "usr_a".to_owned(),
                        username: None,
                        role: Some(Role::Auditor),
                        password: None,
                        legacy_password_hash: None,
                    }),
                    ExpectedVersion::Exact(1),
                ),
                (
                    Event::UserDisabled(UserDisabled {
                        user_id: "usr_a".to_owned(),
                    }),
                    ExpectedVersion::Exact(2),
                ),
                expire("key_1"),
                expire("key_2"),
            ]
        );
        assert_eq!(expired, vec!["key_1".to_owned(), "key_2".to_owned()]);
        // Keys past their expiry are left alone, and nothing changes nothing.
        let (decided, expired) = decide_update(
            &users(),
            "usr_admin",
            "usr_a",
            &UserPatch {
                disabled: Some(true),
                ..UserPatch::default()
            },
            no_password,
            t0() + Duration::days(30),
        )
        .unwrap();
        assert_eq!(decided.len(), 1);
        assert!(expired.is_empty());
        let unchanged = UserPatch {
            role: Some(Role::User),
            disabled: Some(false),
            password_hash: None,
        };
        let (decided, _) = decide_update(
            &users(),
            "usr_admin",
            "usr_a",
            &unchanged,
            no_password,
            t0(),
        )
        .unwrap();
        assert!(decided.is_empty());
    }

    #[test]
    fn an_admin_may_neither_disable_nor_demote_themselves() {
        let err = decide_update(
            &users(),
            "usr_admin",
            "usr_admin",
            &UserPatch {
                disabled: Some(true),
                ..UserPatch::default()
            },
            no_password,
            t0(),
        )
        .unwrap_err();
        assert!(
            matches!(&err, CommandError::Conflict(why)
                if why == "you cannot disable yourself; ask another admin"),
            "{err:?}"
        );
        let err = decide_update(
            &users(),
            "usr_admin",
            "usr_admin",
            &UserPatch {
                role: Some(Role::Auditor),
                ..UserPatch::default()
            },
            no_password,
            t0(),
        )
        .unwrap_err();
        assert!(
            matches!(&err, CommandError::Conflict(why)
                if why == "you cannot remove your own admin role; ask another admin"),
            "{err:?}"
        );
    }

    #[test]
    fn an_unknown_user_is_not_found_and_a_taken_username_conflicts() {
        let err = decide_update(
            &users(),
            "usr_admin",
            "usr_zed",
            &UserPatch::default(),
            no_password,
            t0(),
        )
        .unwrap_err();
        assert!(
            matches!(&err, CommandError::NotFound(what) if what == "user usr_zed"),
            "{err:?}"
        );
        let err = username_free(&users(), "ALICE").unwrap_err();
        assert!(
            matches!(&err, CommandError::Conflict(why) if why == "the username \"alice\" is taken"),
            "{err:?}"
        );
        assert!(username_free(&users(), "bob").is_ok());
    }
}
