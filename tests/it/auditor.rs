//! The auditor role: reads everything, changes nothing, and its reads of the audit history
//! (like everyone's) are recorded; console sign-ins and sign-outs are recorded too.

use axum::http::StatusCode;
use keyward::commands::{Actor, NewKey};
use keyward_events::{AuditRead, AuditReadKind, Event, Role, Scope};
use serde_json::json;

use crate::api::*;
use crate::common::TestApp;
use crate::proxy::{Gw, KeySpec, chat, stored};

/// Creates a user with `role` through the commands layer, and a `full` key for them;
/// returns (user id, secret).
pub async fn user_with_role(t: &TestApp, username: &str, role: Role) -> (String, String) {
    let cmds = &t.running.state.0.commands;
    let (ev, user_id) = cmds.user_created(&Actor::system(), username, role, None);
    cmds.submit(vec![ev]).await.unwrap();
    let (_, secret) = cmds
        .create_key(
            &Actor::system(),
            NewKey {
                name: format!("{username} full"),
                owner_id: user_id.clone(),
                provider_ids: vec![],
                expires_at: chrono::Utc::now() + chrono::Duration::days(10),
                scopes: vec![Scope::Full],
                models: vec![],
                rate_limit: None,
                quota: None,
                ip_allowlist: vec![],
                metadata: Default::default(),
                rotated_from: None,
            },
        )
        .await
        .unwrap();
    (user_id, secret.expose().to_owned())
}

async fn audit_reads(state: &keyward::AppState) -> Vec<AuditRead> {
    stored(state, "audit.read")
        .await
        .into_iter()
        .map(|e| match e {
            Event::AuditRead(r) => r,
            other => panic!("{other:?}"),
        })
        .collect()
}

async fn last_audit_read(gw: &Gw) -> (keyward_events::Envelope, AuditRead) {
    let head = gw.state.0.live.head().seq;
    let env = gw
        .state
        .0
        .store
        .read_from(head - 1, 1)
        .await
        .unwrap()
        .remove(0);
    match env.decode().unwrap() {
        Event::AuditRead(r) => (env, r),
        other => panic!("the last event is not an audit.read: {other:?}"),
    }
}

#[tokio::test]
async fn an_auditor_reads_everything() {
    let gw = Gw::start().await;
    let provider = gw.openai(&["gpt-4o-mini"]).await;
    let api = Api::new(&gw.t);
    let (alice_id, alice) = user_with_full_key(&gw.t, "alice").await;
    let (auditor_id, auditor) = user_with_role(&gw.t, "audrey", Role::Auditor).await;
    let (s, c) = api
        .post(
            "/api/v1/keys",
            &alice,
            json!({"name": "alice's", "expires_in": "1d", "provider_id": provider}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{c}");
    let alice_key = c["key"]["id"].as_str().unwrap().to_owned();

    let (s, me) = api.get("/api/v1/me", &auditor).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(me["role"], "auditor");

    // Every key, every owner's.
    let (s, list) = api.get("/api/v1/keys", &auditor).await;
    assert_eq!(s, StatusCode::OK, "{list}");
    let owners: Vec<&str> = list["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["owner_id"].as_str().unwrap())
        .collect();
    assert!(owners.contains(&alice_id.as_str()), "{list}");
    assert!(owners.contains(&gw.admin_id.as_str()), "{list}");
    let (s, _) = api
        .get(&format!("/api/v1/keys?owner_id={alice_id}"), &auditor)
        .await;
    assert_eq!(s, StatusCode::OK);
    for path in [
        format!("/api/v1/keys/{alice_key}"),
        format!("/api/v1/keys/{alice_key}/events"),
        format!("/api/v1/keys/{alice_key}/metrics"),
        format!("/api/v1/users/{alice_id}"),
        format!("/api/v1/providers/{provider}"),
        "/api/v1/logs".to_owned(),
        format!("/api/v1/logs?user={alice_id}"),
    ] {
        let (s, b) = api.get(&path, &auditor).await;
        assert_eq!(s, StatusCode::OK, "{path}: {b}");
    }

    // Providers, masked as for an admin.
    let (s, providers) = api.get("/api/v1/providers", &auditor).await;
    assert_eq!(s, StatusCode::OK, "{providers}");
    let text = providers.to_string();
    assert!(
        !text.contains(crate::proxy::OPENAI_CREDENTIAL),
        "{providers}"
    );
    assert!(
        providers["providers"][0]["credential"]["masked"].is_string(),
        "{providers}"
    );

    // Users.
    let (s, users) = api.get("/api/v1/users", &auditor).await;
    assert_eq!(s, StatusCode::OK);
    assert!(users.to_string().contains(&alice_id), "{users}");

    // The whole audit history: events of every stream, and the chain's verification.
    let (s, page) = api.get("/api/v1/audit/events?limit=1000", &auditor).await;
    assert_eq!(s, StatusCode::OK);
    let streams: Vec<&str> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["stream"].as_str().unwrap())
        .collect();
    assert!(streams.iter().any(|s| s.starts_with("provider:")), "{page}");
    assert!(streams.iter().any(|s| s.starts_with("user:")), "{page}");
    let (s, v) = api.get("/api/v1/audit/verify", &auditor).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["ok"], true, "{v}");
    // Reading the log's events page by page is not recorded: only copies and views are.
    assert!(audit_reads(&gw.state).await.is_empty());

    // The checkpoint, recorded with its range.
    let (s, cp) = api.get("/api/v1/audit/checkpoint", &auditor).await;
    assert_eq!(s, StatusCode::OK, "{cp}");
    let (env, r) = last_audit_read(&gw).await;
    assert_eq!(env.stream, "audit");
    assert_eq!(env.actor, auditor_id);
    assert_eq!(r.user_id.as_deref(), Some(auditor_id.as_str()));
    assert_eq!(r.kind, AuditReadKind::Checkpoint);
    assert_eq!(r.until_seq, cp["seq"].as_u64());

    // An export: who, which filter, which range; the export ends before its own record.
    let head = gw.state.0.live.head().seq;
    let (s, body) = api
        .get("/api/v1/audit/export?type=key.created&cursor=2", &auditor)
        .await;
    assert_eq!(s, StatusCode::OK);
    let lines: Vec<serde_json::Value> = body
        .as_str()
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.iter().all(|l| l["type"] == "key.created"), "{body}");
    assert!(
        lines
            .iter()
            .any(|l| l["data"]["key_id"] == alice_key.as_str())
    );
    assert!(lines.iter().all(|l| l["seq"].as_u64().unwrap() <= head));
    let (env, r) = last_audit_read(&gw).await;
    assert_eq!(env.seq, head + 1);
    assert_eq!(env.actor, auditor_id);
    assert_eq!(r.kind, AuditReadKind::Export);
    assert_eq!(r.filter.as_deref(), Some("type=key.created&cursor=2"));
    assert_eq!((r.after_seq, r.until_seq), (Some(2), Some(head)));

    // The key table as of a time, recorded with the time asked for.
    let at = keyward::time::format(&chrono::Utc::now());
    let (s, table) = api.get(&format!("/api/v1/keys?as_of={at}"), &auditor).await;
    assert_eq!(s, StatusCode::OK, "{table}");
    assert!(table.to_string().contains(&alice_key), "{table}");
    let (env, r) = last_audit_read(&gw).await;
    assert_eq!(env.actor, auditor_id);
    assert_eq!(r.kind, AuditReadKind::AsOf);
    let filter = r.filter.unwrap();
    assert!(filter.starts_with("as_of="), "{filter}");
    assert_eq!(audit_reads(&gw.state).await.len(), 3);

    // An admin's and a user's exports are recorded as well; a user's sees no audit.read.
    let (s, _) = api.get("/api/v1/audit/export", &alice).await;
    assert_eq!(s, StatusCode::OK);
    let (env, r) = last_audit_read(&gw).await;
    assert_eq!(env.actor, alice_id);
    assert_eq!((r.kind, r.filter), (AuditReadKind::Export, None));
    let (s, page) = api.get("/api/v1/audit/events", &alice).await;
    assert_eq!(s, StatusCode::OK);
    assert!(!page.to_string().contains("audit.read"), "{page}");
}

#[tokio::test]
async fn an_auditor_changes_nothing_not_even_their_own_keys() {
    let gw = Gw::start().await;
    let provider = gw.openai(&["gpt-4o-mini"]).await;
    let api = Api::new(&gw.t);
    let admin = gw.t.admin_secret();
    let (alice_id, alice) = user_with_full_key(&gw.t, "alice").await;
    let (auditor_id, auditor) = user_with_role(&gw.t, "audrey", Role::Auditor).await;
    let (_, c) = api
        .post(
            "/api/v1/keys",
            &alice,
            json!({"name": "alice's", "expires_in": "1d"}),
        )
        .await;
    let alice_key = c["key"]["id"].as_str().unwrap().to_owned();
    // An auditor's own key, created for them by an admin: they may not change it either.
    let (s, c) = api
        .post(
            "/api/v1/keys",
            &admin,
            json!({"name": "audrey's", "expires_in": "1d", "owner_id": auditor_id, "scopes": ["full"]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{c}");
    let own_key = c["key"]["id"].as_str().unwrap().to_owned();

    let head = gw.state.0.live.head().seq;
    let writes: Vec<(axum::http::Method, String, Option<serde_json::Value>)> = {
        use axum::http::Method;
        let mut w = Vec::new();
        w.push((
            Method::POST,
            "/api/v1/keys".to_owned(),
            Some(json!({"name": "mine", "expires_in": "1d"})),
        ));
        for k in [&alice_key, &own_key] {
            w.push((
                Method::PATCH,
                format!("/api/v1/keys/{k}"),
                Some(json!({"name": "renamed"})),
            ));
            w.push((
                Method::POST,
                format!("/api/v1/keys/{k}/rotate"),
                Some(json!({})),
            ));
            w.push((Method::POST, format!("/api/v1/keys/{k}/expire"), None));
            w.push((Method::DELETE, format!("/api/v1/keys/{k}"), None));
        }
        w.push((
            Method::POST,
            "/api/v1/providers".to_owned(),
            Some(json!({"name": "x", "kind": "openai", "base_url": "https://api.openai.com/v1", "api_key": "sk-test-0000000000"})),
        ));
        w.push((
            Method::PATCH,
            format!("/api/v1/providers/{provider}"),
            Some(json!({"name": "renamed"})),
        ));
        w.push((
            Method::PUT,
            format!("/api/v1/providers/{provider}/credential"),
            Some(json!({"api_key": "sk-test-0000000000"})),
        ));
        w.push((
            Method::POST,
            format!("/api/v1/providers/{provider}/verify"),
            None,
        ));
        w.push((
            Method::DELETE,
            format!("/api/v1/providers/{provider}"),
            None,
        ));
        w.push((
            Method::POST,
            "/api/v1/users".to_owned(),
            Some(json!({"username": "mallory", "role": "admin"})),
        ));
        // Promoting themselves, or demoting the admin.
        w.push((
            Method::PATCH,
            format!("/api/v1/users/{auditor_id}"),
            Some(json!({"role": "admin"})),
        ));
        w.push((
            Method::PATCH,
            format!("/api/v1/users/{}", gw.admin_id),
            Some(json!({"disabled": true})),
        ));
        w.push((
            Method::PATCH,
            format!("/api/v1/users/{alice_id}"),
            Some(json!({"role": "user"})),
        ));
        w
    };
    for (m, path, body) in writes {
        let got = api.call(m.clone(), &path, Some(&auditor), body).await;
        let ctx = format!("{m} {path}");
        assert_problem(&got, StatusCode::FORBIDDEN, "auditor_read_only", None);
        assert!(
            got.1["detail"]
                .as_str()
                .unwrap()
                .contains("changes nothing"),
            "{ctx}: {}",
            got.1
        );
        assert_eq!(gw.state.0.live.head().seq, head, "{ctx} wrote an event");
    }
    // Refused before the body is read: a malformed body gets the same 403, not a 4xx
    // about the body.
    let got = api
        .call(
            axum::http::Method::POST,
            "/api/v1/keys",
            Some(&auditor),
            Some(json!({"nonsense": true})),
        )
        .await;
    assert_problem(&got, StatusCode::FORBIDDEN, "auditor_read_only", None);
}

#[tokio::test]
async fn an_admin_cannot_make_themselves_an_auditor() {
    let gw = Gw::start().await;
    let api = Api::new(&gw.t);
    let admin = gw.t.admin_secret();
    let got = api
        .patch(
            &format!("/api/v1/users/{}", gw.admin_id),
            &admin,
            json!({"role": "auditor"}),
        )
        .await;
    assert_problem(&got, StatusCode::CONFLICT, "conflict", None);
    // Another user can be made an auditor, and back.
    let (alice_id, _) = user_with_full_key(&gw.t, "alice").await;
    let (s, u) = api
        .patch(
            &format!("/api/v1/users/{alice_id}"),
            &admin,
            json!({"role": "auditor"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{u}");
    assert_eq!(u["role"], "auditor");
    let (s, u) = api
        .post(
            "/api/v1/users",
            &admin,
            json!({"username": "carol", "role": "auditor"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{u}");
    assert_eq!(u["role"], "auditor");
}

#[tokio::test]
async fn the_proxy_refuses_an_auditors_key() {
    let gw = Gw::start().await;
    let provider = gw.openai(&["gpt-4o-mini"]).await;
    let (auditor_id, _) = user_with_role(&gw.t, "audrey", Role::Auditor).await;
    let (_, secret) = gw
        .key(KeySpec {
            owner: Some(auditor_id),
            scopes: vec![Scope::Chat, Scope::Full, Scope::Read],
            ..KeySpec::on(&provider)
        })
        .await;
    let r = gw
        .post("/v1/chat/completions", &secret, chat("gpt-4o-mini"))
        .await;
    r.assert_error(403, "insufficient_scope");
    assert!(r.text().contains("auditor"), "{}", r.text());
    let r = gw.get("/v1/models", &secret).await;
    r.assert_error(403, "insufficient_scope");
    assert!(gw.mock.seen().is_empty(), "nothing reached the provider");
}

#[tokio::test]
async fn a_read_that_cannot_be_recorded_is_refused() {
    use sqlx::Connection;
    let gw = Gw::start().await;
    let api = Api::new(&gw.t);
    let (_, auditor) = user_with_role(&gw.t, "audrey", Role::Auditor).await;
    // The store refuses to write an `audit.read` (and only that).
    let mut db = crate::common::raw_sqlite(&gw.t.db_path()).await;
    sqlx::query(
        "CREATE TRIGGER refuse_audit_read BEFORE INSERT ON events \
         WHEN NEW.type = (SELECT id FROM names WHERE name = 'audit.read') \
         BEGIN SELECT RAISE(ABORT, 'no audit reads'); END",
    )
    .execute(&mut db)
    .await
    .unwrap();
    let head = gw.state.0.live.head().seq;
    for path in [
        "/api/v1/audit/export".to_owned(),
        "/api/v1/audit/checkpoint".to_owned(),
        format!(
            "/api/v1/keys?as_of={}",
            keyward::time::format(&chrono::Utc::now())
        ),
    ] {
        let got = api.get(&path, &auditor).await;
        assert_eq!(got.0, StatusCode::SERVICE_UNAVAILABLE, "{path}: {}", got.1);
        assert_eq!(got.1["status"], 503, "{path}: {}", got.1);
        assert!(got.1["code"].is_string(), "{path}: {}", got.1);
        assert_eq!(gw.state.0.live.head().seq, head, "{path}");
    }
    sqlx::query("DROP TRIGGER refuse_audit_read")
        .execute(&mut db)
        .await
        .unwrap();
    db.close().await.unwrap();
    let (s, _) = api.get("/api/v1/audit/checkpoint", &auditor).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(audit_reads(&gw.state).await.len(), 1);
}

// ---------- console ----------

/// The `action` of every POST form on a page.
fn post_actions(body: &str) -> Vec<String> {
    body.split("<form")
        .skip(1)
        .filter_map(|rest| {
            let tag = &rest[..rest.find('>').unwrap_or(rest.len())];
            if !tag.contains("method=\"post\"") {
                return None;
            }
            Some(
                tag.split("action=\"")
                    .nth(1)
                    .and_then(|a| a.split('"').next())
                    .unwrap_or("<no action>")
                    .to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn an_auditors_console_is_read_only_and_sign_ins_are_recorded() {
    use crate::ui::{Browser, Console, PASSWORD};
    let c = Console::start().await;
    let auditor_id = c.user("audrey", Role::Auditor).await;
    let alice_id = c.user("alice", Role::User).await;
    let (alice_key, _) =
        c.gw.key(KeySpec {
            owner: Some(alice_id.clone()),
            ..KeySpec::on(&c.provider)
        })
        .await;

    let mut b = Browser::new(&c.base);
    let p = b.sign_in("audrey", PASSWORD).await;
    assert_eq!(p.status, reqwest::StatusCode::SEE_OTHER, "{}", p.body);
    assert_eq!(p.headers["location"], "/ui/admin/keys");
    let signed_in = stored(c.state(), "user.signed_in").await;
    let session = match signed_in.as_slice() {
        [Event::UserSignedIn(e)] => {
            assert_eq!(e.user_id, auditor_id);
            e.session.clone()
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(session.len(), 16);
    assert!(session.chars().all(|ch| ch.is_ascii_hexdigit()));
    let token = b.session.clone().unwrap();
    assert!(
        !token.contains(&session),
        "the label is not a piece of the token"
    );

    // Every key, and nothing that changes anything: the only POST forms are sign-out and
    // (on Audit) verifying the chain, which is a read.
    let p = b.get("/ui/admin/keys").await;
    assert_eq!(p.status, reqwest::StatusCode::OK);
    assert!(p.body.contains(&alice_key), "alice's key is listed");
    assert!(p.body.contains("auditor"), "the role is shown");
    for (path, allowed) in [
        ("/ui/admin/keys", vec!["/ui/logout"]),
        ("/ui/logs", vec!["/ui/logout"]),
        (&*format!("/ui/keys/{alice_key}"), vec!["/ui/logout"]),
        ("/ui/audit", vec!["/ui/logout", "/ui/audit/verify"]),
    ] {
        let p = b.get(path).await;
        assert_eq!(p.status, reqwest::StatusCode::OK, "{path}: {}", p.body);
        let actions = post_actions(&p.body);
        assert!(
            actions.iter().all(|a| allowed.contains(&a.as_str())),
            "{path} has a form that would be refused: {actions:?}"
        );
        for word in [
            "data-open=\"create-dialog\"",
            "rotate-dialog",
            "expire-dialog",
            "delete-dialog",
            "edit-dialog",
        ] {
            assert!(!p.body.contains(word), "{path} shows {word}");
        }
    }
    // The Audit page offers the as-of table, and verifying works.
    let p = b.get("/ui/audit").await;
    assert!(p.body.contains("as_of"), "{}", p.body);
    let p = b.post("/ui/audit/verify", &[]).await;
    assert_eq!(p.status, reqwest::StatusCode::OK);
    assert!(p.body.contains("Chain intact"), "{}", p.body);
    // "My API Keys" is every key for an auditor; the admin pages stay closed.
    let p = b.get("/ui/keys").await;
    assert_eq!(p.status, reqwest::StatusCode::SEE_OTHER);
    assert_eq!(p.headers["location"], "/ui/admin/keys");
    for path in ["/ui/providers", "/ui/users"] {
        let p = b.get(path).await;
        assert_eq!(p.status, reqwest::StatusCode::FORBIDDEN, "{path}");
    }
    // A forged form is refused like the API refuses it, and writes nothing.
    let head = c.state().0.live.head().seq;
    for (path, form) in [
        ("/ui/keys", vec![("name", "mine"), ("expires_in", "1d")]),
        (&*format!("/ui/keys/{alice_key}/expire"), vec![]),
        (&*format!("/ui/keys/{alice_key}/delete"), vec![]),
        (
            &*format!("/ui/keys/{alice_key}/rotate"),
            vec![("grace_period", "0")],
        ),
        (&*format!("/ui/keys/{alice_key}/edit"), vec![("name", "x")]),
        (&*format!("/ui/users/{alice_id}"), vec![("role", "admin")]),
    ] {
        let p = b.post(path, &form).await;
        assert_eq!(
            p.status,
            reqwest::StatusCode::FORBIDDEN,
            "{path}: {}",
            p.body
        );
        assert_eq!(c.state().0.live.head().seq, head, "{path} wrote an event");
    }
    // The console's export is recorded as the auditor's.
    let p = b.get("/ui/audit/export").await;
    assert_eq!(p.status, reqwest::StatusCode::OK);
    let reads = audit_reads(c.state()).await;
    assert!(
        reads.iter().any(|r| r.kind == AuditReadKind::Export
            && r.user_id.as_deref() == Some(auditor_id.as_str())),
        "{reads:?}"
    );

    let p = b.post("/ui/logout", &[]).await;
    assert_eq!(p.status, reqwest::StatusCode::SEE_OTHER);
    match stored(c.state(), "user.signed_out").await.as_slice() {
        [Event::UserSignedOut(e)] => {
            assert_eq!(e.user_id, auditor_id);
            assert_eq!(e.session, session, "the same label as the sign-in");
        }
        other => panic!("{other:?}"),
    }
    let env = c
        .state()
        .0
        .store
        .read(
            &keyward::store::EventFilter {
                types: vec!["user.signed_out".into()],
                ..Default::default()
            },
            10,
        )
        .await
        .unwrap();
    assert_eq!(env[0].stream, format!("session:{auditor_id}"));
    assert_eq!(env[0].actor, auditor_id);
    // A failed sign-in is not a session: nothing more is recorded.
    let mut other = Browser::new(&c.base);
    let p = other.sign_in("audrey", "not the password at all").await;
    assert_eq!(p.status, reqwest::StatusCode::UNAUTHORIZED);
    assert_eq!(stored(c.state(), "user.signed_in").await.len(), 1);
}

#[tokio::test]
async fn the_command_lines_export_and_replay_are_recorded() {
    use crate::common::{keyward, stderr, stdout};
    let t = TestApp::start().await;
    let TestApp { running, dir } = t;
    running.shutdown().await;
    let o = keyward(dir.path(), &["audit", "export", "--type", "key.created"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        stdout(&o).lines().count(),
        1,
        "the record is not part of the export"
    );
    let o = keyward(
        dir.path(),
        &["audit", "replay", "--as-of", "2030-01-01T00:00:00Z"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = keyward(dir.path(), &["audit", "export", "--from-seq", "3"]);
    let envs: Vec<keyward_events::Envelope> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // seq 3: the first export, seq 4: the replay; this export's own record follows them.
    assert_eq!(envs.len(), 2, "{}", stdout(&o));
    for e in &envs {
        assert_eq!(
            (e.event_type.as_str(), e.actor.as_str(), e.stream.as_str()),
            ("audit.read", "cli", "audit")
        );
    }
    match envs[0].decode().unwrap() {
        Event::AuditRead(r) => {
            assert_eq!(r.kind, AuditReadKind::Export);
            assert_eq!(r.user_id, None);
            assert_eq!(r.filter.as_deref(), Some("type=key.created"));
            assert_eq!((r.after_seq, r.until_seq), (Some(0), Some(2)));
        }
        other => panic!("{other:?}"),
    }
    match envs[1].decode().unwrap() {
        Event::AuditRead(r) => {
            assert_eq!(r.kind, AuditReadKind::AsOf);
            let f = r.filter.unwrap();
            assert!(f.starts_with("as_of=2030-01-01T00:00:00"), "{f}");
        }
        other => panic!("{other:?}"),
    }
    // The chain still verifies with the records in it.
    let o = keyward(dir.path(), &["audit", "verify"]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
}
