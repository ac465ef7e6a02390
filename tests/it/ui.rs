//! The web console: sessions, CSRF, throttling and authorization over real HTTP, and the
//! browser flows (tests/ui/flows.mjs) in headless Chromium.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use keyward::AppState;
use keyward::commands::{Actor, UserPatch};
use keyward_events::Role;
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, SET_COOKIE};
use tokio::task::JoinHandle;

use crate::proxy::{Gw, KeySpec};

pub const PASSWORD: &str = "correct horse battery staple";

/// Keyward served on a real port, with the mock provider and one OpenAI provider.
pub struct Console {
    pub gw: Gw,
    pub base: String,
    pub provider: String,
    _server: JoinHandle<()>,
}

impl Console {
    pub async fn start() -> Console {
        Console::start_with(|_| {}).await
    }

    pub async fn start_with(f: impl FnOnce(&mut keyward::config::Config)) -> Console {
        let gw = Gw::start_with(f).await;
        let provider = gw.openai(&["gpt-4o-mini"]).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = keyward::app(gw.state.clone());
        // The listener `serve` runs, with the configured timeouts and connection cap.
        let server = tokio::spawn(keyward::http::listener::serve(
            listener,
            app,
            keyward::http::listener::HttpLimits::of(&gw.state.0.config, None),
            std::future::pending(),
        ));
        set_password(&gw.state, &gw.admin_id, PASSWORD).await;
        Console {
            gw,
            base: format!("http://{addr}"),
            provider,
            _server: server,
        }
    }

    pub fn state(&self) -> &AppState {
        &self.gw.state
    }

    pub async fn user(&self, name: &str, role: Role) -> String {
        let u = self
            .state()
            .0
            .commands
            .create_user(&Actor::system(), name, role, None)
            .await
            .unwrap();
        set_password(self.state(), &u.user_id, PASSWORD).await;
        u.user_id.clone()
    }
}

pub async fn set_password(state: &AppState, user_id: &str, password: &str) {
    let phc = keyward::crypto::hash_password(password).unwrap();
    state
        .0
        .commands
        .update_user(
            &Actor::system(),
            user_id,
            UserPatch {
                password_hash: Some(phc.into()),
                ..UserPatch::default()
            },
        )
        .await
        .unwrap();
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

fn cookie_from(h: &HeaderMap, name: &str) -> Option<(String, String)> {
    h.get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with(&format!("{name}=")))
        .map(|c| {
            let value = c[name.len() + 1..].split(';').next().unwrap().to_owned();
            (value, c.to_owned())
        })
}

/// A browser-like session: cookies kept by hand, Origin sent on POST.
pub struct Browser {
    pub base: String,
    pub http: reqwest::Client,
    pub session: Option<String>,
    pub csrf: Option<String>,
}

pub struct Page {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

fn hidden_csrf(body: &str) -> Option<String> {
    let i = body.find("name=\"csrf\" value=\"")?;
    let rest = &body[i + 19..];
    Some(rest[..rest.find('"')?].to_owned())
}

impl Browser {
    pub fn new(base: &str) -> Browser {
        Browser {
            base: base.to_owned(),
            http: client(),
            session: None,
            csrf: None,
        }
    }

    pub async fn get(&mut self, path: &str) -> Page {
        let mut req = self.http.get(format!("{}{path}", self.base));
        if let Some(s) = &self.session {
            req = req.header("cookie", format!("kw_session={s}"));
        }
        let res = req.send().await.unwrap();
        let page = Page {
            status: res.status(),
            headers: res.headers().clone(),
            body: res.text().await.unwrap(),
        };
        if let Some(t) = hidden_csrf(&page.body) {
            self.csrf = Some(t);
        }
        page
    }

    /// A form post with the session cookie, this origin, and `csrf` unless `form` has one.
    pub async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Page {
        let mut fields: Vec<(String, String)> = form
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        if !form.iter().any(|(k, _)| *k == "csrf")
            && let Some(t) = &self.csrf
        {
            fields.push(("csrf".into(), t.clone()));
        }
        self.post_raw(path, &fields, Some(&self.base.clone())).await
    }

    pub async fn post_raw(
        &mut self,
        path: &str,
        fields: &[(String, String)],
        origin: Option<&str>,
    ) -> Page {
        let mut req = self.http.post(format!("{}{path}", self.base)).form(fields);
        if let Some(s) = &self.session {
            req = req.header("cookie", format!("kw_session={s}"));
        }
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        let res = req.send().await.unwrap();
        Page {
            status: res.status(),
            headers: res.headers().clone(),
            body: res.text().await.unwrap(),
        }
    }

    /// Signs in through the form; returns the sign-in response.
    pub async fn sign_in(&mut self, username: &str, password: &str) -> Page {
        self.sign_in_with(username, password, &[]).await
    }

    pub async fn sign_in_with(
        &mut self,
        username: &str,
        password: &str,
        extra_headers: &[(&str, &str)],
    ) -> Page {
        let page = self
            .http
            .get(format!("{}/ui/login", self.base))
            .send()
            .await
            .unwrap();
        let (pre, _) = cookie_from(page.headers(), "kw_pre").expect("the login page sets kw_pre");
        let body = page.text().await.unwrap();
        let token = hidden_csrf(&body).unwrap();
        let mut req = self
            .http
            .post(format!("{}/ui/login", self.base))
            .header("cookie", format!("kw_pre={pre}"))
            .header("origin", &self.base)
            .form(&[
                ("csrf", token.as_str()),
                ("username", username),
                ("password", password),
            ]);
        for (k, v) in extra_headers {
            req = req.header(*k, *v);
        }
        let res = req.send().await.unwrap();
        let headers = res.headers().clone();
        if let Some((s, _)) = cookie_from(&headers, "kw_session") {
            self.session = Some(s);
        }
        Page {
            status: res.status(),
            headers,
            body: res.text().await.unwrap(),
        }
    }
}

fn location(p: &Page) -> &str {
    p.headers
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

async fn signed_in_admin(c: &Console) -> Browser {
    let mut b = Browser::new(&c.base);
    let p = b.sign_in("admin", PASSWORD).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
    assert_eq!(location(&p), "/ui/admin/keys");
    let page = b.get("/ui/keys").await;
    assert_eq!(page.status, StatusCode::OK);
    b
}

#[tokio::test]
async fn every_console_response_carries_the_security_headers() {
    let c = Console::start().await;
    let mut b = Browser::new(&c.base);
    let login = b.get("/ui/login").await.body;
    let asset = |ext: &str| {
        let at = login.find(&format!(".{ext}\"")).unwrap();
        let start = login[..at].rfind("\"/ui/assets/").unwrap() + 1;
        login[start..at + 1 + ext.len()].to_owned()
    };
    let (css, js) = (asset("css"), asset("js"));
    for path in ["/ui/login", "/ui/setup", "/ui/nowhere", css.as_str()] {
        let p = b.get(path).await;
        let h = |n: &str| {
            p.headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        assert!(
            h("content-security-policy").starts_with("default-src 'self'"),
            "{path}"
        );
        assert!(
            h("content-security-policy").contains("frame-ancestors 'none'"),
            "{path}"
        );
        assert_eq!(h("x-frame-options"), "DENY", "{path}");
        assert_eq!(h("referrer-policy"), "same-origin", "{path}");
        assert_eq!(h("x-content-type-options"), "nosniff", "{path}");
        if path.contains("/assets/") {
            assert_eq!(h("cache-control"), "public, max-age=31536000, immutable");
        } else {
            assert_eq!(h("cache-control"), "no-store", "{path}");
        }
    }
    let p = b.get("/ui/nowhere").await;
    assert_eq!(p.status, StatusCode::NOT_FOUND);
    assert!(p.body.contains("There is no console page at this address."));
    // Nothing is loaded from another origin.
    assert_eq!(
        b.get("/ui/assets/console-0.css").await.status,
        StatusCode::NOT_FOUND
    );
    for path in ["/ui/login", css.as_str(), js.as_str()] {
        let body = b.get(path).await.body;
        assert!(
            !body.contains("https://") && !body.contains("http://"),
            "{path} names an external URL"
        );
    }
    // Signed out, a page sends you to sign in.
    let p = b.get("/ui/keys").await;
    assert_eq!(p.status, StatusCode::SEE_OTHER);
    assert_eq!(location(&p), "/ui/login");
}

#[tokio::test]
async fn sign_in_sets_a_strict_http_only_session_cookie_and_sign_out_ends_it() {
    let c = Console::start().await;
    let mut b = Browser::new(&c.base);
    let p = b.sign_in("admin", PASSWORD).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER);
    let (value, raw) = cookie_from(&p.headers, "kw_session").unwrap();
    assert_eq!(value.len(), 64, "256 random bits, hex");
    assert!(
        raw.contains("HttpOnly") && raw.contains("SameSite=Strict") && raw.contains("Path=/ui")
    );
    assert!(raw.contains("Max-Age=28800"), "8 hours by default: {raw}");
    assert!(
        !raw.contains("Secure"),
        "plain HTTP without a trusted proxy: {raw}"
    );
    assert_eq!(c.state().0.console.sessions_of(&c.gw.admin_id), 1);

    let page = b.get("/ui/admin/keys").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("API Keys"));

    let p = b.post("/ui/logout", &[]).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER);
    assert_eq!(location(&p), "/ui/login");
    let (cleared, raw) = cookie_from(&p.headers, "kw_session").unwrap();
    assert_eq!(cleared, "");
    assert!(raw.contains("Max-Age=0"));
    assert_eq!(c.state().0.console.sessions_of(&c.gw.admin_id), 0);
    // The old cookie no longer opens anything.
    let p = b.get("/ui/keys").await;
    assert_eq!(p.status, StatusCode::SEE_OTHER);
    assert_eq!(location(&p), "/ui/login");
}

#[tokio::test]
async fn the_cookie_is_secure_behind_a_trusted_tls_proxy_and_its_ttl_is_configurable() {
    let c = Console::start_with(|cfg| {
        cfg.trust_forwarded_proto = true;
        cfg.session_ttl = Duration::from_secs(1800);
    })
    .await;
    let mut b = Browser::new(&c.base);
    let p = b
        .sign_in_with("admin", PASSWORD, &[("x-forwarded-proto", "https")])
        .await;
    let (_, raw) = cookie_from(&p.headers, "kw_session").unwrap();
    assert!(raw.contains("; Secure"), "{raw}");
    assert!(raw.contains("Max-Age=1800"), "{raw}");

    // Without the trusted setting the header is ignored.
    let c = Console::start().await;
    let mut b = Browser::new(&c.base);
    let p = b
        .sign_in_with("admin", PASSWORD, &[("x-forwarded-proto", "https")])
        .await;
    let (_, raw) = cookie_from(&p.headers, "kw_session").unwrap();
    assert!(!raw.contains("Secure"), "{raw}");
}

#[tokio::test]
async fn a_failed_sign_in_does_not_say_whether_the_user_exists() {
    let c = Console::start().await;
    let mut b = Browser::new(&c.base);
    let wrong = b.sign_in("admin", "not the password at all").await;
    let unknown = b.sign_in("nobody", "not the password at all").await;
    let no_password = {
        c.state()
            .0
            .commands
            .create_user(&Actor::system(), "keyonly", Role::User, None)
            .await
            .unwrap();
        b.sign_in("keyonly", "not the password at all").await
    };
    for p in [&wrong, &unknown, &no_password] {
        assert_eq!(p.status, StatusCode::UNAUTHORIZED);
        assert!(
            p.body.contains("The username or password is not correct."),
            "{}",
            p.body
        );
        assert!(cookie_from(&p.headers, "kw_session").is_none());
    }
    assert!(b.session.is_none());
}

#[tokio::test]
async fn failed_sign_ins_are_throttled_per_username() {
    let c = Console::start().await;
    let mut b = Browser::new(&c.base);
    for _ in 0..5 {
        let p = b.sign_in("admin", "wrong password 123").await;
        assert_eq!(p.status, StatusCode::UNAUTHORIZED);
    }
    // A slow machine may let a cell refill (one a minute) between attempts: go on until
    // the throttle answers, which it must within a few more.
    let mut throttled = false;
    for _ in 0..5 {
        if b.sign_in("admin", "wrong password 123").await.status == StatusCode::TOO_MANY_REQUESTS {
            throttled = true;
            break;
        }
    }
    assert!(throttled, "the sixth failure in a row is throttled");
    let p = b.sign_in("admin", PASSWORD).await;
    assert_eq!(
        p.status,
        StatusCode::TOO_MANY_REQUESTS,
        "even the right password waits"
    );
    assert!(
        p.body
            .contains("Too many sign-in attempts. Wait a minute and try again.")
    );
    assert!(cookie_from(&p.headers, "kw_session").is_none());
    // Another username from the same address is not locked out by this one.
    c.user("bob", Role::User).await;
    let p = b.sign_in("bob", PASSWORD).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn failed_sign_ins_are_throttled_per_address() {
    let c = Console::start().await;
    let mut b = Browser::new(&c.base);
    // 20 at once are allowed, then one every 3 s: a slow machine may see a few more pass.
    for i in 0..20 {
        let p = b.sign_in(&format!("ghost{i}"), "wrong password 123").await;
        assert_eq!(p.status, StatusCode::UNAUTHORIZED);
    }
    let mut throttled = None;
    for i in 20..80 {
        let p = b.sign_in(&format!("ghost{i}"), "wrong password 123").await;
        if p.status == StatusCode::TOO_MANY_REQUESTS {
            throttled = Some(p);
            break;
        }
    }
    let p = throttled.expect("an address that keeps failing is throttled");
    assert!(
        p.body
            .contains("Too many sign-in attempts. Wait a minute and try again.")
    );
}

#[tokio::test]
async fn forms_without_the_session_token_or_from_another_origin_are_refused() {
    let c = Console::start().await;
    let mut b = signed_in_admin(&c).await;
    let token = b.csrf.clone().unwrap();
    let form = |csrf: Option<&str>| {
        let mut f = vec![
            ("name".to_owned(), "csrf-test".to_owned()),
            ("provider_id".to_owned(), c.provider.clone()),
            ("expires_in".to_owned(), "30d".to_owned()),
        ];
        if let Some(t) = csrf {
            f.push(("csrf".to_owned(), t.to_owned()));
        }
        f
    };
    let base = c.base.clone();

    let missing = b.post_raw("/ui/keys", &form(None), Some(&base)).await;
    assert_eq!(missing.status, StatusCode::FORBIDDEN);
    assert!(
        missing.body.contains("the form has no CSRF token"),
        "{}",
        missing.body
    );

    let wrong = "0".repeat(64);
    let p = b
        .post_raw("/ui/keys", &form(Some(&wrong)), Some(&base))
        .await;
    assert_eq!(p.status, StatusCode::FORBIDDEN);
    assert!(
        p.body
            .contains("the form&#39;s CSRF token is not this session&#39;s")
            || p.body
                .contains("the form's CSRF token is not this session's"),
        "{}",
        p.body
    );

    let p = b
        .post_raw("/ui/keys", &form(Some(&token)), Some("http://evil.example"))
        .await;
    assert_eq!(p.status, StatusCode::FORBIDDEN);
    assert!(
        p.body.contains("the request came from another origin"),
        "{}",
        p.body
    );

    let p = b.post_raw("/ui/keys", &form(Some(&token)), None).await;
    assert_eq!(p.status, StatusCode::FORBIDDEN);
    assert!(
        p.body
            .contains("the request does not say where it came from")
    );

    // A token from another session does not work either.
    let mut other = signed_in_admin(&c).await;
    let p = other
        .post_raw("/ui/keys", &form(Some(&token)), Some(&base))
        .await;
    assert_eq!(p.status, StatusCode::FORBIDDEN);

    // Nothing was created by any of those.
    assert!(
        !c.state()
            .0
            .live
            .read()
            .keys
            .iter()
            .any(|k| k.name() == "csrf-test")
    );

    let ok = b
        .post_raw("/ui/keys", &form(Some(&token)), Some(&base))
        .await;
    assert_eq!(ok.status, StatusCode::CREATED, "{}", ok.body);
    assert!(ok.body.contains("It will not be shown again"));
    let created = c
        .state()
        .0
        .live
        .read()
        .keys
        .iter()
        .find(|k| k.name() == "csrf-test")
        .cloned()
        .unwrap();
    assert_eq!(created.created_by(), c.gw.admin_id, "the user is the actor");
    // The secret is in this response, and only in this one.
    let secret_start = ok.body.find("value=\"kw_").unwrap() + 7;
    let secret = &ok.body[secret_start..secret_start + 52];
    let again = b.get("/ui/admin/keys").await;
    assert!(!again.body.contains(secret));
    let detail = b.get(&format!("/ui/keys/{}", created.key_id())).await;
    assert!(!detail.body.contains(secret));

    // The sign-in form is protected the same way.
    let p = reqwest::Client::new()
        .post(format!("{}/ui/login", c.base))
        .header("origin", &c.base)
        .form(&[("username", "admin"), ("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(p.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn field_errors_come_back_next_to_the_field() {
    let c = Console::start().await;
    let mut b = signed_in_admin(&c).await;
    let p = b
        .post(
            "/ui/keys",
            &[
                ("name", "ok"),
                ("provider_id", &c.provider),
                ("expires_in", "30d"),
                ("ip_allowlist", "not-an-ip"),
            ],
        )
        .await;
    assert_eq!(p.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(p.body.contains("id=\"err-ip_allowlist\""), "{}", p.body);
    assert!(p.body.contains("aria-invalid=\"true\""));
    assert!(
        p.body.contains("open-on-load"),
        "the dialog opens again with the values"
    );
    assert!(p.body.contains("value=\"not-an-ip\""));
}

#[tokio::test]
async fn session_cookies_do_not_open_the_api_or_the_proxy_and_keys_do_not_open_the_console() {
    let c = Console::start().await;
    let b = signed_in_admin(&c).await;
    let session = b.session.clone().unwrap();
    let http = client();
    for path in ["/api/v1/me", "/api/v1/keys", "/v1/models"] {
        let res = http
            .get(format!("{}{path}", c.base))
            .header("cookie", format!("kw_session={session}"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{path}");
    }
    let res = http
        .post(format!("{}/v1/chat/completions", c.base))
        .header("cookie", format!("kw_session={session}"))
        .json(&crate::proxy::chat("gpt-4o-mini"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "missing_api_key");

    let admin_key = c.gw.t.admin_secret();
    for req in [
        http.get(format!("{}/ui/keys", c.base))
            .bearer_auth(&admin_key),
        http.get(format!("{}/ui/keys", c.base))
            .header("cookie", format!("kw_session={admin_key}")),
        http.get(format!("{}/ui/keys", c.base))
            .header("x-api-key", &admin_key),
    ] {
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), StatusCode::SEE_OTHER);
        assert_eq!(res.headers()["location"], "/ui/login");
    }
}

#[tokio::test]
async fn a_user_sees_only_their_keys_and_admin_pages_are_refused() {
    let c = Console::start().await;
    let alice = c.user("alice", Role::User).await;
    let (admin_key_id, _) = c.gw.key(KeySpec::on(&c.provider)).await;
    let mut spec = KeySpec::on(&c.provider);
    spec.owner = Some(alice.clone());
    let (alice_key_id, _) = c.gw.key(spec).await;

    let mut b = Browser::new(&c.base);
    let p = b.sign_in("alice", PASSWORD).await;
    assert_eq!(location(&p), "/ui/keys");
    let mine = b.get("/ui/keys").await;
    assert!(mine.body.contains(&alice_key_id));
    assert!(!mine.body.contains(&admin_key_id));
    assert!(
        !mine.body.contains("href=\"/ui/providers\""),
        "no admin links for users"
    );

    for path in ["/ui/admin/keys", "/ui/providers", "/ui/users"] {
        let p = b.get(path).await;
        assert_eq!(p.status, StatusCode::FORBIDDEN, "{path}");
        assert!(
            p.body.contains("this page needs the admin role")
                || p.body.contains("this action needs the admin role"),
            "{path}: {}",
            p.body
        );
    }
    let p = b.get(&format!("/ui/keys/{admin_key_id}")).await;
    assert_eq!(p.status, StatusCode::NOT_FOUND);
    assert!(
        p.body
            .contains(&format!("key {admin_key_id} was not found"))
    );
    for action in ["expire", "delete", "rotate"] {
        let p = b
            .post(&format!("/ui/keys/{admin_key_id}/{action}"), &[])
            .await;
        assert_eq!(p.status, StatusCode::NOT_FOUND, "{action}");
    }
    let p = b
        .post("/ui/users", &[("username", "mallory"), ("role", "admin")])
        .await;
    assert_eq!(p.status, StatusCode::FORBIDDEN);
    let p = b.post("/ui/audit/verify", &[]).await;
    assert_eq!(p.status, StatusCode::FORBIDDEN);
    // A user may not create a key for someone else.
    let p = b
        .post(
            "/ui/keys",
            &[
                ("name", "x"),
                ("provider_id", &c.provider),
                ("owner_id", &c.gw.admin_id),
            ],
        )
        .await;
    assert_eq!(p.status, StatusCode::FORBIDDEN);
    assert!(
        p.body
            .contains("only admins may create keys for other users")
    );
    let k = c
        .state()
        .0
        .live
        .read()
        .keys
        .get(&admin_key_id)
        .cloned()
        .unwrap();
    assert!(!k.is_deleted() && k.expired().is_none());

    // Their own key they can expire, and the event names them.
    let p = b
        .post(
            &format!("/ui/keys/{alice_key_id}/expire"),
            &[("return_to", "/ui/keys")],
        )
        .await;
    assert_eq!(p.status, StatusCode::SEE_OTHER);
    assert_eq!(location(&p), "/ui/keys?notice=expired");
    let evs = crate::proxy::stored(c.state(), "key.expired").await;
    assert_eq!(evs.len(), 1);
}

/// An admin's "My API Keys" is their own keys; "Admin → API Keys" is every key, with an
/// Owner column.
#[tokio::test]
async fn an_admins_my_api_keys_lists_only_their_own_keys() {
    let c = Console::start().await;
    let alice = c.user("alice", Role::User).await;
    let (admin_key_id, _) = c.gw.key(KeySpec::on(&c.provider)).await;
    let mut spec = KeySpec::on(&c.provider);
    spec.owner = Some(alice);
    let (alice_key_id, _) = c.gw.key(spec).await;

    let mut b = signed_in_admin(&c).await;
    let mine = b.get("/ui/keys").await;
    assert_eq!(mine.status, StatusCode::OK);
    assert!(mine.body.contains("Keys you own"));
    assert!(mine.body.contains(&admin_key_id), "{}", mine.body);
    assert!(
        !mine.body.contains(&alice_key_id),
        "alice's key is not the admin's own"
    );
    assert!(!mine.body.contains(">Owner</th>"));

    let all = b.get("/ui/admin/keys").await;
    assert!(all.body.contains(&admin_key_id) && all.body.contains(&alice_key_id));
    assert!(all.body.contains(">Owner</th>"), "{}", all.body);
}

#[tokio::test]
async fn disabling_a_user_or_changing_their_password_ends_their_sessions() {
    let c = Console::start().await;
    let bob = c.user("bob", Role::User).await;
    let mut b = Browser::new(&c.base);
    b.sign_in("bob", PASSWORD).await;
    assert_eq!(b.get("/ui/keys").await.status, StatusCode::OK);
    set_password(c.state(), &bob, "another long password").await;
    assert_eq!(b.get("/ui/keys").await.status, StatusCode::SEE_OTHER);

    let p = b.sign_in("bob", "another long password").await;
    assert_eq!(p.status, StatusCode::SEE_OTHER);
    assert_eq!(b.get("/ui/keys").await.status, StatusCode::OK);
    let mut admin = signed_in_admin(&c).await;
    admin.get("/ui/users").await;
    let p = admin
        .post(&format!("/ui/users/{bob}"), &[("disabled", "true")])
        .await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
    assert_eq!(b.get("/ui/keys").await.status, StatusCode::SEE_OTHER);
    let p = b.sign_in("bob", "another long password").await;
    assert_eq!(p.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_initial_admin_sets_a_password_once_with_the_admin_key() {
    let gw = Gw::start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = keyward::app(gw.state.clone());
    tokio::spawn(async move {
        let _ = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await;
    });
    let base = format!("http://{addr}");
    let http = client();
    let setup = |key: String, pw: &'static str, confirm: &'static str| {
        let http = http.clone();
        let base = base.clone();
        async move {
            // The form's double-submit token; the login page's works too, and the set-up
            // page shows no form once the password is set.
            let page = http.get(format!("{base}/ui/login")).send().await.unwrap();
            let (pre, _) = cookie_from(page.headers(), "kw_pre").unwrap();
            let token = hidden_csrf(&page.text().await.unwrap()).unwrap();
            let res = http
                .post(format!("{base}/ui/setup"))
                .header("cookie", format!("kw_pre={pre}"))
                .header("origin", &base)
                .form(&[
                    ("csrf", token.as_str()),
                    ("admin_key", key.as_str()),
                    ("password", pw),
                    ("confirm", confirm),
                ])
                .send()
                .await
                .unwrap();
            (res.status(), res.text().await.unwrap())
        }
    };
    // While the admin has no password, the set-up page shows its form.
    let open = http.get(format!("{base}/ui/setup")).send().await.unwrap();
    let open = open.text().await.unwrap();
    assert!(open.contains("name=\"admin_key\""), "{open}");
    let (s, body) = setup(gw.t.admin_secret(), "short", "short").await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body.contains("The password must be 12 to 1024 characters."));
    let (s, body) = setup(
        gw.t.admin_secret(),
        "a long password 1",
        "a long password 2",
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body.contains("The two passwords differ."));
    let (_, chat_key) = gw.key(KeySpec::on("prv_none")).await;
    let (s, body) = setup(chat_key, "a long password 1", "a long password 1").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(body.contains("This is not a working admin key with scope full."));
    let (s, body) = setup(
        gw.t.admin_secret(),
        "a long password 1",
        "a long password 1",
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert!(body.contains("The admin password is set."));
    let admin = gw
        .state
        .0
        .live
        .read()
        .users
        .get(&gw.admin_id)
        .cloned()
        .unwrap();
    assert!(
        gw.state
            .0
            .keyring
            .password_of(&admin)
            .unwrap()
            .expose()
            .starts_with("$argon2id$")
    );
    let evs = crate::proxy::stored(&gw.state, "user.updated").await;
    let Some(keyward_events::Event::UserUpdated(u)) = evs.last() else {
        panic!()
    };
    assert!(u.password.is_some() && u.legacy_password_hash.is_none());
    // Once set, the page is closed: no form, and it says where to go.
    let page = http.get(format!("{base}/ui/setup")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let body = page.text().await.unwrap();
    assert!(body.contains("Set-up is done"), "{body}");
    assert!(body.contains("The admin password is set: sign in with it."));
    assert!(!body.contains("<form"), "{body}");
    assert!(!body.contains("admin_key"), "{body}");
    // And a post anyway is refused.
    let (s, body) = setup(
        gw.t.admin_secret(),
        "a long password 3",
        "a long password 3",
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert!(body.contains("This admin already has a password"));
    // Setting it did not sign anyone in: the key opens no session.
    let mut b = Browser::new(&base);
    assert_eq!(
        b.sign_in("admin", "a long password 1").await.status,
        StatusCode::SEE_OTHER
    );
}

#[tokio::test]
async fn bootstrap_sets_the_admin_password_from_stdin() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let run = |input: &str| {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_keyward"))
            .arg("--data-dir")
            .arg(dir.path())
            .args(["bootstrap", "--username", "root", "--password-stdin"])
            .env_remove("KEYWARD_DATABASE_URL")
            .env_remove("KEYWARD_MASTER_KEYS")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let o = run("short\n");
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("--password-stdin: the password must be 12 to 1024 characters, not 5")
    );
    let o = run("a password from stdin\n");
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!String::from_utf8_lossy(&o.stdout).contains("a password from stdin"));
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_keyward"))
        .arg("--data-dir")
        .arg(dir.path())
        .args(["audit", "export"])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&o.stdout);
    // The password went in sealed: no PHC string in the export.
    assert!(log.contains("\"password\":{\"ciphertext\":"), "{log}");
    assert!(!log.contains("argon2"), "{log}");
    assert!(!log.contains("a password from stdin"));
}

#[tokio::test]
async fn key_detail_shows_the_usage_chart_history_and_grace_uses() {
    let c = Console::start().await;
    let (id, secret) = c.gw.key(KeySpec::on(&c.provider)).await;
    let r =
        c.gw.post(
            "/v1/chat/completions",
            &secret,
            crate::proxy::chat("gpt-4o-mini"),
        )
        .await;
    assert_eq!(r.status, axum::http::StatusCode::OK);
    c.gw.last_used(1).await;
    let mut b = signed_in_admin(&c).await;
    let p = b.get(&format!("/ui/keys/{id}")).await;
    assert_eq!(p.status, StatusCode::OK);
    assert!(p.body.contains("<svg"));
    assert!(
        p.body
            .contains("<title id=\"chart-title\">Requests and errors per day</title>")
    );
    assert!(p.body.contains("1 requests and 0 errors"), "{}", p.body);
    assert!(p.body.contains("key.created"));
    assert!(p.body.contains("This key was not rotated."));
    let p = b
        .post(&format!("/ui/keys/{id}/rotate"), &[("grace_period", "24h")])
        .await;
    assert_eq!(p.status, StatusCode::CREATED);
    assert!(
        p.body.contains("The rotated key&#39;s new secret")
            || p.body.contains("The rotated key's new secret")
    );
    let r =
        c.gw.post(
            "/v1/chat/completions",
            &secret,
            crate::proxy::chat("gpt-4o-mini"),
        )
        .await;
    assert_eq!(
        r.status,
        axum::http::StatusCode::OK,
        "the old key works during the grace"
    );
    c.gw.last_used(2).await;
    let p = b.get(&format!("/ui/keys/{id}")).await;
    assert!(p.body.contains("key.rotated"));
    assert!(
        p.body.contains("Someone has not switched over yet."),
        "{}",
        p.body
    );
}

// ---------- the browser ----------

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Why the browser flows cannot run here, if they cannot.
fn browser_missing(ui: &Path) -> Option<String> {
    if !Path::new("/usr/bin/chromium").exists() {
        return Some(
            "/usr/bin/chromium is missing (apt-get install chromium chromium-driver)".into(),
        );
    }
    if !ui.join("node_modules/playwright-core").exists() {
        return Some(format!(
            "{}/node_modules is missing (npm ci in tests/ui)",
            ui.display()
        ));
    }
    if std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_err()
    {
        return Some("node is missing".into());
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_flows() {
    let ui = repo().join("tests/ui");
    if let Some(why) = browser_missing(&ui) {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI must run the browser flows: {why}"
        );
        crate::skip::skipped("ui::browser_flows", &why);
        return;
    }
    let c = Console::start().await;
    c.user("alice", Role::User).await;
    let shots = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo().join("target"))
        .join("ui-screenshots");
    let _ = std::fs::remove_dir_all(&shots);
    std::fs::create_dir_all(&shots).unwrap();
    let provider_name = c
        .state()
        .0
        .live
        .read()
        .providers
        .get(&c.provider)
        .unwrap()
        .name
        .clone();
    let out = tokio::process::Command::new("node")
        .arg(ui.join("flows.mjs"))
        .env("KW_BASE", &c.base)
        .env("KW_PASSWORD", PASSWORD)
        .env("KW_PROVIDER", &provider_name)
        .env("KW_SHOTS", &shots)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(600), out)
        .await
        .expect("the browser flows took more than 10 minutes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "browser flows failed:\n{stdout}\n{stderr}"
    );
    for flow in [
        "01-sign-in",
        "02-create-key",
        "03-proxy",
        "04-expire",
        "05-rotate",
        "06-delete",
        "07-user-my-keys",
        "08-provider-delete-warning",
        "09-audit-as-of",
    ] {
        assert!(
            shots.join(format!("{flow}.png")).exists(),
            "no screenshot for {flow}"
        );
        assert!(
            stdout.contains(&format!("ok {flow}")),
            "{flow} did not report ok"
        );
    }
}

#[tokio::test]
async fn admins_manage_providers_users_logs_and_the_audit_from_the_console() {
    let c = Console::start().await;
    let upstream = crate::common::MockProvider::start().await;
    let mut b = signed_in_admin(&c).await;
    let base_url = format!("http://{}/v1", upstream.addr);

    // A credential the provider refuses is not stored; the error sits by the field.
    b.get("/ui/providers").await;
    let p = b
        .post(
            "/ui/providers",
            &[
                ("name", "acme"),
                ("kind", "openai"),
                ("base_url", &base_url),
                ("api_key", "sk-bad-0123456789"),
                ("models", "gpt-4o-mini"),
            ],
        )
        .await;
    assert_eq!(p.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", p.body);
    assert!(p.body.contains("id=\"err-api_key\""));
    assert!(p.body.contains("the provider refused the credential (401)"));
    assert!(
        !p.body.contains("sk-bad-0123456789"),
        "the refused credential is not echoed"
    );

    let p = b
        .post(
            "/ui/providers",
            &[
                ("name", "acme"),
                ("kind", "openai"),
                ("base_url", &base_url),
                ("api_key", "sk-good-0123456789wxyz"),
                ("models", "gpt-4o-mini"),
            ],
        )
        .await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
    assert_eq!(location(&p), "/ui/providers?notice=created");
    let page = b.get("/ui/providers?notice=created").await;
    assert!(
        page.body
            .contains("The provider was created and its credential checked.")
    );
    assert!(
        page.body.contains("sk-g…wxyz") || page.body.contains("sk-…wxyz"),
        "masked: {}",
        page.body
    );
    assert!(
        !page.body.contains("sk-good-0123456789wxyz"),
        "never the credential itself"
    );
    let acme = c
        .state()
        .0
        .live
        .read()
        .providers
        .by_name("acme")
        .unwrap()
        .provider_id
        .clone();
    assert!(
        page.body.contains(
            &c.state()
                .0
                .live
                .read()
                .providers
                .get(&acme)
                .unwrap()
                .credential
                .as_ref()
                .unwrap()
                .fingerprint[..16]
        )
    );

    let p = b.post(&format!("/ui/providers/{acme}/verify"), &[]).await;
    assert_eq!(p.status, StatusCode::OK);
    assert!(
        p.body
            .contains("The credential works: the provider answered the check.")
    );

    let p = b
        .post(
            &format!("/ui/providers/{acme}/credential"),
            &[("api_key", "sk-wrong-0000000000")],
        )
        .await;
    assert_eq!(p.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(p.body.contains("the provider refused the credential (401)"));
    assert!(!p.body.contains("sk-wrong-0000000000"));
    let p = b
        .post(
            &format!("/ui/providers/{acme}/credential"),
            &[("api_key", "sk-good-replacement-1234")],
        )
        .await;
    assert_eq!(p.status, StatusCode::SEE_OTHER);

    let p = b
        .post("/ui/providers/prv_01J00000000000000000000000/verify", &[])
        .await;
    assert_eq!(p.status, StatusCode::NOT_FOUND);

    // Users: create, a duplicate name, change role, disable.
    let p = b
        .post(
            "/ui/users",
            &[("username", "carol"), ("role", "user"), ("password", "")],
        )
        .await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
    let p = b
        .post(
            "/ui/users",
            &[("username", "Carol"), ("role", "user"), ("password", "")],
        )
        .await;
    assert_eq!(p.status, StatusCode::CONFLICT);
    assert!(
        p.body.contains("the username &quot;carol&quot; is taken")
            || p.body.contains("the username \"carol\" is taken"),
        "{}",
        p.body
    );
    let p = b
        .post(
            "/ui/users",
            &[
                ("username", "dave"),
                ("role", "user"),
                ("password", "short"),
            ],
        )
        .await;
    assert_eq!(p.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(p.body.contains("id=\"err-password\""));
    let carol = c
        .state()
        .0
        .live
        .read()
        .users
        .by_username("carol")
        .unwrap()
        .user_id
        .clone();
    let p = b
        .post(&format!("/ui/users/{carol}"), &[("role", "admin")])
        .await;
    assert_eq!(p.status, StatusCode::SEE_OTHER);
    assert_eq!(
        c.state().0.live.read().users.get(&carol).unwrap().role,
        Role::Admin
    );
    let p = b
        .post(
            &format!("/ui/users/{}", c.gw.admin_id),
            &[("disabled", "true")],
        )
        .await;
    assert_eq!(p.status, StatusCode::CONFLICT);
    assert!(
        p.body
            .contains("you cannot disable yourself; ask another admin")
    );

    // The provider's delete: refused without force while keys use it, listed in the page.
    let mut spec = KeySpec::on(&acme);
    spec.owner = Some(carol.clone());
    let (key_id, _) = c.gw.key(spec).await;
    let page = b.get("/ui/providers").await;
    assert!(page.body.contains("1 working key(s) use this provider"));
    assert!(page.body.contains(&key_id));
    let p = b
        .post(
            &format!("/ui/providers/{acme}/delete"),
            &[("force", "false")],
        )
        .await;
    assert_eq!(p.status, StatusCode::CONFLICT);
    assert!(p.body.contains("1 active key(s) still use provider"));

    // Logs, filtered by user and outcome.
    let mut spec = KeySpec::on(&c.provider);
    spec.owner = Some(carol.clone());
    let (key_id, secret) = c.gw.key(spec).await;
    let r =
        c.gw.post(
            "/v1/chat/completions",
            &secret,
            crate::proxy::chat("gpt-4o-mini"),
        )
        .await;
    assert_eq!(r.status, axum::http::StatusCode::OK);
    c.gw.last_used(1).await;
    let p = b
        .get(&format!("/ui/logs?user={carol}&outcome=success"))
        .await;
    assert_eq!(p.status, StatusCode::OK);
    assert!(
        p.body.contains(&format!("href=\"/ui/keys/{key_id}\"")),
        "{}",
        p.body
    );
    let p = b.get("/ui/logs?outcome=denied").await;
    assert!(p.body.contains("No requests match"));
    let p = b.get("/ui/logs?from=yesterday").await;
    assert_eq!(p.status, StatusCode::OK);
    assert!(p.body.contains("class=\"notice error\""), "{}", p.body);

    // Audit: verify, export, and a broken chain named by its seq.
    let p = b.post("/ui/audit/verify", &[]).await;
    assert_eq!(p.status, StatusCode::OK);
    assert!(p.body.contains("Chain intact"));
    let res = client()
        .get(format!("{}/ui/audit/export", c.base))
        .header(
            "cookie",
            format!("kw_session={}", b.session.clone().unwrap()),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "application/x-ndjson");
    assert!(
        res.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .contains("attachment")
    );
    let ndjson = res.text().await.unwrap();
    assert!(ndjson.lines().count() > 5);
    assert!(
        !ndjson.contains("sk-good"),
        "no provider credential in the export"
    );
    let p = b.get("/ui/audit?as_of=not-a-time").await;
    assert!(
        p.body
            .contains("as_of &quot;not-a-time&quot; is not an RFC 3339 time")
            || p.body.contains("is not an RFC 3339 time"),
        "{}",
        p.body
    );
    crate::common::tamper(&c.gw.t.db_path(), 3).await;
    let p = b.post("/ui/audit/verify", &[]).await;
    assert!(p.body.contains("Chain broken"), "{}", p.body);
    assert!(p.body.contains("The first bad event is seq 3"));
}

#[tokio::test]
async fn edit_changes_name_expiry_and_limit_and_refuses_what_cannot_change() {
    let c = Console::start().await;
    let (id, _) = c.gw.key(KeySpec::on(&c.provider)).await;
    let mut b = signed_in_admin(&c).await;
    let day = (chrono::Utc::now() + chrono::Duration::days(10))
        .format("%Y-%m-%d")
        .to_string();
    let p = b
        .post(
            &format!("/ui/keys/{id}/edit"),
            &[
                ("name", "renamed"),
                ("expires_on", &day),
                ("rate_limit", "120"),
                ("return_to", "/ui/admin/keys"),
            ],
        )
        .await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
    assert_eq!(location(&p), "/ui/admin/keys?notice=updated");
    let k = c.state().0.live.read().keys.get(&id).cloned().unwrap();
    assert_eq!(k.name(), "renamed");
    assert_eq!(k.expires_at.format("%Y-%m-%d").to_string(), day);
    assert_eq!(k.rate_limit.unwrap().requests_per_minute, 120);
    let evs = crate::proxy::stored(c.state(), "key.updated").await;
    assert_eq!(evs.len(), 1, "one event for the three changes");

    let p = b
        .post(
            &format!("/ui/keys/{id}/edit"),
            &[("expires_on", "31/12/2026")],
        )
        .await;
    assert_eq!(p.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(p.body.contains("a date such as 2026-12-31"));
    let p = b
        .post(
            &format!("/ui/keys/{id}/edit"),
            &[
                ("name", "renamed"),
                ("expires_on", &day),
                ("rate_limit", "120"),
            ],
        )
        .await;
    assert_eq!(p.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(p.body.contains("the request changes nothing"));
    let p = b
        .post(&format!("/ui/keys/{id}/edit"), &[("rate_limit", "lots")])
        .await;
    assert_eq!(p.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(p.body.contains("a whole number of requests per minute"));

    let p = b.post(&format!("/ui/keys/{id}/delete"), &[]).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER);
    let p = b
        .post(&format!("/ui/keys/{id}/edit"), &[("name", "again")])
        .await;
    assert_eq!(p.status, StatusCode::CONFLICT);
    assert!(p.body.contains("is deleted and can no longer be changed"));
    let p = b.post(&format!("/ui/keys/{id}/expire"), &[]).await;
    assert_eq!(p.status, StatusCode::CONFLICT);
    let p = b
        .post(
            "/ui/keys/key_01J00000000000000000000000/edit",
            &[("name", "x")],
        )
        .await;
    assert_eq!(p.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_provider_form_offers_each_kinds_own_fields() {
    let c = Console::start().await;
    let mut b = signed_in_admin(&c).await;
    let page = b.get("/ui/providers").await;
    // Every kind of the provider layer's list, with its own fields.
    for k in keyward::providers::KINDS {
        let kind = k.kind().as_str();
        assert!(
            page.body.contains(&format!("option value=\"{kind}\"")),
            "{kind}"
        );
        assert!(
            page.body.contains(&format!("data-kind=\"{kind}\"")),
            "{kind}"
        );
        for f in k.fields() {
            let name = if f.secret {
                format!("cred.{kind}.{}", f.name)
            } else {
                format!("cfg.{kind}.{}", f.name)
            };
            assert!(page.body.contains(&format!("name=\"{name}\"")), "{name}");
        }
    }
    // Secret parts are password inputs (the service account's key a textarea), never
    // prefilled.
    assert!(page.body.contains(
        "name=\"cred.bedrock.secret_access_key\" type=\"password\" autocomplete=\"off\""
    ));
    assert!(
        page.body
            .contains("textarea id=\"p-vertex-service_account\"")
    );

    // The chosen kind's fields are what the API gets: a Vertex key that is not a service
    // account's is refused by the field, and not echoed.
    let p = b
        .post(
            "/ui/providers",
            &[
                ("name", "vertex"),
                ("kind", "vertex"),
                ("base_url", "https://us-central1-aiplatform.googleapis.com"),
                ("cfg.vertex.project_id", "my-project"),
                ("cfg.vertex.location", "us-central1"),
                (
                    "cred.vertex.service_account",
                    "{\"type\": \"service_account\", \"private_key\": \"not-a-pem-canary-1234\"}",
                ),
                // Another kind's fields are ignored.
                ("cfg.bedrock.region", "not a region"),
            ],
        )
        .await;
    assert_eq!(p.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", p.body);
    assert!(p.body.contains("id=\"err-api_key\""), "{}", p.body);
    assert!(!p.body.contains("not-a-pem-canary-1234"));
    // Azure with Entra ID needs its tenant.
    let p = b
        .post(
            "/ui/providers",
            &[
                ("name", "azure"),
                ("kind", "azure_openai"),
                ("base_url", "https://contoso.openai.azure.com"),
                ("cfg.azure_openai.api_version", "2024-10-21"),
                ("cfg.azure_openai.deployments", "{\"gpt-4o\": \"gpt-4o\"}"),
                ("cfg.azure_openai.auth", "entra_id"),
                (
                    "cfg.azure_openai.client_id",
                    "00000000-0000-0000-0000-000000000001",
                ),
                ("cred.azure_openai.api_key", "entra-client-secret-canary"),
            ],
        )
        .await;
    assert_eq!(p.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", p.body);
    assert!(p.body.contains("config.tenant_id"), "{}", p.body);
    assert!(!p.body.contains("entra-client-secret-canary"));
    assert!(c.state().0.live.read().providers.by_name("azure").is_none());
}
