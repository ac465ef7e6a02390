use keyward_events::*;

use crate::support::*;

#[test]
fn a_created_user_is_found_by_id_and_username() {
    let s = given([(at(1, 0), user_created(ADMIN, "admin", Role::Admin))]);
    let u = s.users.get(ADMIN).unwrap();
    assert_eq!(u.user_id, ADMIN);
    assert_eq!(u.username, "admin");
    assert_eq!(u.role, Role::Admin);
    assert!(matches!(
        &u.password,
        Some(keyward_projections::StoredPassword::Sealed(s)) if s.ciphertext.starts_with("c1phertext")
    ));
    assert!(!u.disabled);
    assert_eq!(
        (u.created_at, u.updated_at, u.version),
        (at(1, 0), at(1, 0), 1)
    );
    assert_eq!(s.users.by_username("admin").unwrap().user_id, ADMIN);
    assert!(s.users.by_username("Admin").is_none());
    assert_eq!((s.users.len(), s.users.is_empty()), (1, false));
    assert!(given([]).users.is_empty());
}

#[test]
fn an_update_changes_role_name_and_password() {
    let mut log = Log::new();
    log.push(at(1, 0), user_created(ALICE, "alice", Role::User));
    log.push(
        at(2, 0),
        Event::UserUpdated(UserUpdated {
            user_id: ALICE.into(),
            username: None,
            role: Some(Role::Admin),
            password: None,
            legacy_password_hash: None,
        }),
    );
    log.push(
        at(3, 0),
        Event::UserUpdated(UserUpdated {
            user_id: ALICE.into(),
            username: Some("alice.w".into()),
            role: None,
            password: None,
            legacy_password_hash: None,
        }),
    );
    // Someone else may take the old name after the rename.
    log.push(at(4, 0), user_created("usr_other", "alice", Role::User));
    // A schema 1 row sets a plaintext PHC string; the projection keeps it for sign-in.
    log.push_new(legacy_password_set(at(5, 0), ALICE, "$argon2id$new"));
    let s = log.state();
    let u = s.users.get(ALICE).unwrap();
    assert_eq!(u.role, Role::Admin);
    assert_eq!(u.username, "alice.w");
    assert_eq!(
        u.password,
        Some(keyward_projections::StoredPassword::Legacy(
            "$argon2id$new".into()
        ))
    );
    assert_eq!((u.version, u.updated_at), (4, at(5, 0)));
    assert_eq!(s.users.by_username("alice.w").unwrap().user_id, ALICE);
    assert_eq!(s.users.by_username("alice").unwrap().user_id, "usr_other");
    assert_eq!(s.users.iter().count(), 2);
}

#[test]
fn disabling_and_enabling_toggle_the_flag() {
    let disabled = || {
        Event::UserDisabled(UserDisabled {
            user_id: ALICE.into(),
        })
    };
    let enabled = || {
        Event::UserEnabled(UserEnabled {
            user_id: ALICE.into(),
        })
    };
    // (given after creation, then disabled, version)
    let cases: Vec<(Vec<Event>, bool, u64)> = vec![
        (vec![], false, 1),
        (vec![disabled()], true, 2),
        (vec![disabled(), enabled()], false, 3),
        (vec![disabled(), enabled(), disabled()], true, 4),
    ];
    for (events, want, version) in cases {
        let s = given(
            std::iter::once(user_created(ALICE, "alice", Role::User))
                .chain(events)
                .enumerate()
                .map(|(i, e)| (at(1, i as u32), e)),
        );
        let u = s.users.get(ALICE).unwrap();
        assert_eq!((u.disabled, u.version), (want, version));
        assert_eq!(s.users.by_username("alice").unwrap().disabled, want);
    }
}

#[test]
fn debug_output_never_shows_the_password_hash() {
    let mut log = Log::new();
    log.push(at(1, 0), user_created(ALICE, "alice", Role::User));
    log.push(at(1, 1), user_created("usr_old", "old", Role::User));
    log.push_new(legacy_password_set(
        at(2, 0),
        "usr_old",
        "$argon2id$v=19$legacy",
    ));
    let s = log.state();
    assert!(s.users.get("usr_old").unwrap().password.is_some());
    let u = s.users.get(ALICE).unwrap();
    let sealed = u.password.as_ref().unwrap().identity().to_owned();
    for debug in [format!("{u:?}"), format!("{:?}", s.users), format!("{s:?}")] {
        assert!(!debug.contains(&sealed), "{debug}");
        assert!(!debug.contains("argon2"), "{debug}");
        assert!(debug.contains("<redacted>"), "{debug}");
        assert!(debug.contains("alice"), "{debug}");
    }
}

#[test]
fn events_for_unknown_users_are_ignored() {
    let s = given([
        (at(1, 0), user_created(ALICE, "alice", Role::User)),
        (
            at(2, 0),
            Event::UserDisabled(UserDisabled {
                user_id: "usr_x".into(),
            }),
        ),
        (
            at(3, 0),
            Event::UserUpdated(UserUpdated {
                user_id: "usr_x".into(),
                username: Some("x".into()),
                role: None,
                password: None,
                legacy_password_hash: None,
            }),
        ),
    ]);
    assert_eq!(s.users.len(), 1);
    assert!(s.users.by_username("x").is_none());
    assert_eq!(s.head.seq, 3);
}
