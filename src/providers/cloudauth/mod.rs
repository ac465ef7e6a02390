//! Credentials for the cloud providers that do not take a plain API key: a Google service
//! account exchanged for an OAuth access token (Vertex AI), a Microsoft Entra ID client
//! secret exchanged for one (Azure OpenAI), and AWS Signature Version 4 (Bedrock).
//!
//! The access tokens live in a [`TokenCache`] per credential, so that a token endpoint is
//! asked once per token lifetime and not once per request, and only one request asks at a
//! time. No message of this module names a secret: client secrets, private keys, assertions
//! and access tokens are scrubbed out of what an identity provider answers before it
//! becomes an [`AuthError`].
//!
//! Only external crates (and `crate::redact`) are used here, so that the module can move.

pub mod entra;
pub mod google;
pub mod sigv4;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

/// Why a credential could not be turned into something a provider accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The identity provider refused the credential (a 400, 401 or 403 from its token
    /// endpoint). `detail` is its `error` / `error_description`, secrets scrubbed out,
    /// at most [`DETAIL_MAX`] characters.
    #[error("the identity provider refused the credential ({status}): {detail}")]
    Rejected { status: u16, detail: String },
    /// The identity provider could not be reached or did not answer usefully (connect
    /// error, timeout, a 5xx or a redirect). Names no secret.
    #[error("the identity provider could not be reached: {0}")]
    Unreachable(String),
    /// The credential itself is unusable (bad JSON, bad PEM, a missing field), or the token
    /// endpoint answered something that is not a token.
    #[error("unusable credential: {0}")]
    Invalid(String),
}

/// The most characters of an identity provider's error text kept in
/// [`AuthError::Rejected`].
pub const DETAIL_MAX: usize = 300;

/// How long before its expiry a token is replaced: five minutes, or half its lifetime
/// when that is shorter than ten minutes (see [`refresh_before`]).
pub const REFRESH_BEFORE: Duration = Duration::from_secs(5 * 60);

/// The longest lifetime believed from a token endpoint; a larger `expires_in` is cut to
/// this (Entra's longest is 24 hours, Google's one hour).
const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// How long before the end of a token's `lifetime` it is replaced.
pub fn refresh_before(lifetime: Duration) -> Duration {
    if lifetime < 2 * REFRESH_BEFORE {
        lifetime / 2
    } else {
        REFRESH_BEFORE
    }
}

/// An access token and when it expires. Its `Debug` shows no part of the token.
pub struct Token {
    value: Zeroizing<String>,
    pub expires_at: Instant,
    /// When a [`TokenCache`] stops handing it out and fetches a new one.
    refresh_at: Instant,
}

impl Token {
    /// A token fetched at `fetched_at` that the endpoint said lives `expires_in`.
    pub fn new(value: String, fetched_at: Instant, expires_in: Duration) -> Token {
        let lifetime = expires_in.min(MAX_LIFETIME);
        let expires_at = fetched_at.checked_add(lifetime).unwrap_or(fetched_at);
        let refresh_at = expires_at
            .checked_sub(refresh_before(lifetime))
            .unwrap_or(fetched_at);
        Token {
            value: Zeroizing::new(value),
            expires_at,
            refresh_at,
        }
    }

    /// The access token, for an `Authorization: Bearer` header. Never log it.
    pub fn value(&self) -> &str {
        &self.value
    }

    fn is_fresh(&self, now: Instant) -> bool {
        now < self.refresh_at
    }

    fn is_valid(&self, now: Instant) -> bool {
        now < self.expires_at
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("value", &"***")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// What the last fetch of a [`TokenCache`] came to, numbered, so that a caller that
/// waited for a fetch can tell that one finished and take its result.
struct Outcome {
    generation: u64,
    result: Result<Arc<Token>, AuthError>,
}

/// One credential's access token, fetched again shortly before it expires.
///
/// [`TokenCache::get`] takes no async lock while the cached token is fresh. When it is not,
/// one caller fetches (holding an async mutex across the fetch) and those that arrive
/// meanwhile wait for that fetch and take its result, error included: none of them fetches
/// again after it, and none waits for two fetches in a row.
pub struct TokenCache {
    current: parking_lot::RwLock<Option<Arc<Token>>>,
    last: parking_lot::Mutex<Outcome>,
    fetching: tokio::sync::Mutex<()>,
}

impl Default for TokenCache {
    fn default() -> Self {
        TokenCache::new()
    }
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("current", &*self.current.read())
            .finish()
    }
}

impl TokenCache {
    pub fn new() -> TokenCache {
        TokenCache {
            current: parking_lot::RwLock::new(None),
            last: parking_lot::Mutex::new(Outcome {
                generation: 0,
                result: Err(AuthError::Invalid("no token fetched yet".to_owned())),
            }),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    /// The cached token if it is fresh, else the one `fetch` gets (token and `expires_in`),
    /// or the one another caller's fetch in flight gets.
    ///
    /// When the fetch fails and the cached token has not expired yet, that token is
    /// returned instead of the error (with a warning), so that an identity provider's
    /// outage of a few minutes does not stop traffic.
    pub async fn get<F, Fut>(&self, fetch: F) -> Result<Arc<Token>, AuthError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(String, Duration), AuthError>>,
    {
        if let Some(t) = self.fresh(Instant::now()) {
            return Ok(t);
        }
        let seen = self.last.lock().generation;
        let _fetching = self.fetching.lock().await;
        {
            let last = self.last.lock();
            if last.generation != seen {
                // A fetch finished while this caller waited: its result is this caller's.
                return match &last.result {
                    Ok(t) => Ok(t.clone()),
                    Err(e) => self.fallback(e.clone()),
                };
            }
        }
        if let Some(t) = self.fresh(Instant::now()) {
            return Ok(t);
        }
        let started = Instant::now();
        let result = fetch()
            .await
            .map(|(value, expires_in)| Arc::new(Token::new(value, started, expires_in)));
        if let Ok(t) = &result {
            *self.current.write() = Some(t.clone());
        }
        {
            let mut last = self.last.lock();
            last.generation = last.generation.wrapping_add(1);
            last.result = result.clone();
        }
        match result {
            Ok(t) => Ok(t),
            Err(e) => self.fallback(e),
        }
    }

    /// Drops the cached token: the provider refused it (a 401), so the next
    /// [`get`](Self::get) fetches a new one and no failed fetch falls back to it.
    pub fn invalidate(&self) {
        *self.current.write() = None;
    }

    fn fresh(&self, now: Instant) -> Option<Arc<Token>> {
        self.current
            .read()
            .as_ref()
            .filter(|t| t.is_fresh(now))
            .cloned()
    }

    /// After a failed fetch: the cached token while it has not expired, else the error.
    fn fallback(&self, e: AuthError) -> Result<Arc<Token>, AuthError> {
        let now = Instant::now();
        let old = self
            .current
            .read()
            .as_ref()
            .filter(|t| t.is_valid(now))
            .cloned();
        match old {
            Some(t) => {
                tracing::warn!(
                    error = %e,
                    expires_in_secs = t.expires_at.saturating_duration_since(now).as_secs(),
                    "could not refresh an access token; using the cached one until it expires",
                );
                Ok(t)
            }
            None => Err(e),
        }
    }

    #[cfg(test)]
    fn put(&self, token: Token) {
        *self.current.write() = Some(Arc::new(token));
    }
}

/// The most credentials [`TokenCaches`] keeps a cache for.
pub const MAX_CACHES: usize = 1024;

/// How long [`TokenCaches`] keeps a cache nobody asked for.
pub const CACHE_IDLE: Duration = Duration::from_secs(3600);

/// A [`TokenCache`] per credential, by a 32-byte key the caller derives from the provider
/// and the credential (e.g. blake3 of both), so that a rotated credential gets a new cache
/// and never the old credential's token. Caches unused for [`CACHE_IDLE`] are dropped, and
/// at most [`MAX_CACHES`] are kept (the least recently used goes first).
#[derive(Default)]
pub struct TokenCaches {
    map: parking_lot::Mutex<HashMap<[u8; 32], Used>>,
}

/// A cache and when it was last asked for.
type Used = (Arc<TokenCache>, Instant);

impl TokenCaches {
    pub fn new() -> TokenCaches {
        TokenCaches::default()
    }

    /// The cache for `key`, made when there is none.
    pub fn cache(&self, key: [u8; 32]) -> Arc<TokenCache> {
        let now = Instant::now();
        let mut map = self.map.lock();
        if let Some((cache, used)) = map.get_mut(&key) {
            *used = now;
            return cache.clone();
        }
        map.retain(|_, (_, used)| now.saturating_duration_since(*used) < CACHE_IDLE);
        while map.len() >= MAX_CACHES {
            let oldest = map
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| *k);
            match oldest {
                Some(k) => {
                    map.remove(&k);
                }
                None => break,
            }
        }
        let cache = Arc::new(TokenCache::new());
        map.insert(key, (cache.clone(), now));
        cache
    }

    /// How many caches are kept.
    pub fn len(&self) -> usize {
        self.map.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

// ---- shared by the token exchanges ----

/// The most bytes of a token endpoint's answer read.
const MAX_ANSWER: usize = 64 * 1024;

/// An absolute `http`/`https` URL with a host, for a token endpoint.
fn token_endpoint(url: &str, what: &str) -> Result<reqwest::Url, AuthError> {
    let u = reqwest::Url::parse(url)
        .map_err(|_| AuthError::Invalid(format!("{what} is not an absolute URL")))?;
    if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none_or(str::is_empty) {
        return Err(AuthError::Invalid(format!(
            "{what} is not an http(s) URL with a host"
        )));
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(AuthError::Invalid(format!("{what} carries user info")));
    }
    Ok(u)
}

/// `text` with every occurrence of each secret (as is, and form-encoded) replaced by `***`,
/// control characters replaced by spaces, cut to [`DETAIL_MAX`] characters.
fn scrub(text: &str, secrets: &[&str]) -> String {
    let mut out = text.to_owned();
    for s in secrets.iter().filter(|s| !s.is_empty()) {
        out = out.replace(s, "***");
        let encoded: String = url::form_urlencoded::byte_serialize(s.as_bytes()).collect();
        if encoded != *s {
            out = out.replace(&encoded, "***");
        }
    }
    let out: String = out
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    match out.char_indices().nth(DETAIL_MAX) {
        Some((i, _)) => {
            // Secrets are gone before the cut, so the cut cannot leave a secret's beginning.
            let mut cut = out[..i].to_owned();
            cut.push('…');
            cut
        }
        None => out,
    }
}

/// POSTs `form` to a token endpoint and reads an OAuth 2.0 token answer:
/// `(access_token, expires_in)`. `secrets` are scrubbed out of any error text.
///
/// The caller's `client` must not follow redirects (a redirect would carry the form's
/// secret elsewhere); one that it does not follow comes back here as a 3xx and is
/// [`AuthError::Unreachable`].
async fn post_token_form(
    client: &reqwest::Client,
    url: reqwest::Url,
    form: &[(&str, &str)],
    secrets: &[&str],
) -> Result<(String, Duration), AuthError> {
    let body = Zeroizing::new(
        serde_urlencoded::to_string(form)
            .map_err(|_| AuthError::Invalid("the token request cannot be form-encoded".into()))?,
    );
    let resp = client
        .post(url)
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .header(reqwest::header::ACCEPT, "application/json")
        .body(body.as_bytes().to_vec())
        .send()
        .await
        .map_err(|e| AuthError::Unreachable(transport_error(&e, secrets)))?;
    let status = resp.status();
    let answer = read_capped(resp)
        .await
        .map_err(|e| AuthError::Unreachable(transport_error(&e, secrets)))?;
    if matches!(status.as_u16(), 400 | 401 | 403) {
        return Err(AuthError::Rejected {
            status: status.as_u16(),
            detail: rejection_detail(&answer, secrets),
        });
    }
    if !status.is_success() {
        return Err(AuthError::Unreachable(format!(
            "token endpoint answered {}",
            status.as_u16()
        )));
    }
    parse_token_answer(&answer)
}

fn transport_error(e: &reqwest::Error, secrets: &[&str]) -> String {
    let what = if e.is_timeout() {
        "timed out: "
    } else if e.is_connect() {
        "could not connect: "
    } else {
        ""
    };
    scrub(&format!("{what}{}", crate::redact::http_error(e)), secrets)
}

async fn read_capped(mut resp: reqwest::Response) -> Result<Zeroizing<Vec<u8>>, reqwest::Error> {
    let mut out = Zeroizing::new(Vec::new());
    while let Some(chunk) = resp.chunk().await? {
        let room = MAX_ANSWER.saturating_sub(out.len());
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if out.len() >= MAX_ANSWER {
            break;
        }
    }
    Ok(out)
}

/// The `error: error_description` of an OAuth error answer, else its text; scrubbed.
fn rejection_detail(answer: &[u8], secrets: &[&str]) -> String {
    let text = match serde_json::from_slice::<serde_json::Value>(answer) {
        Ok(v) => {
            let field = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_owned();
            let (error, description) = (field("error"), field("error_description"));
            match (error.is_empty(), description.is_empty()) {
                (false, false) => format!("{error}: {description}"),
                (false, true) => error,
                (true, false) => description,
                (true, true) => "no error in the answer".to_owned(),
            }
        }
        Err(_) if answer.is_empty() => "an empty answer".to_owned(),
        Err(_) => String::from_utf8_lossy(answer).into_owned(),
    };
    scrub(&text, secrets)
}

/// `{"access_token", "expires_in", "token_type"}` (`expires_in` a number or, as Entra's
/// v1 endpoint sends it, a string of one).
fn parse_token_answer(answer: &[u8]) -> Result<(String, Duration), AuthError> {
    let not_a_token = || AuthError::Invalid("the token endpoint's answer is not a token".into());
    let v: serde_json::Value = serde_json::from_slice(answer).map_err(|_| not_a_token())?;
    let token = v
        .get("access_token")
        .and_then(|t| t.as_str())
        .filter(|t| !t.is_empty())
        .ok_or_else(not_a_token)?;
    if let Some(tt) = v.get("token_type")
        && !tt
            .as_str()
            .is_some_and(|t| t.eq_ignore_ascii_case("bearer"))
    {
        return Err(AuthError::Invalid(
            "the token endpoint's answer is not a bearer token".into(),
        ));
    }
    let expires_in = match v.get("expires_in") {
        Some(serde_json::Value::Number(n)) => n.as_u64(),
        Some(serde_json::Value::String(s)) => s.trim().parse::<u64>().ok(),
        _ => None,
    }
    .filter(|s| *s > 0)
    .ok_or_else(|| {
        AuthError::Invalid("the token endpoint's answer has no positive expires_in".into())
    })?;
    Ok((token.to_owned(), Duration::from_secs(expires_in)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn token(fresh_for: Duration, valid_for: Duration, value: &str) -> Token {
        let now = Instant::now();
        Token {
            value: Zeroizing::new(value.to_owned()),
            expires_at: now + valid_for,
            refresh_at: now + fresh_for,
        }
    }

    #[test]
    fn refresh_before_is_five_minutes_or_half_a_short_lifetime() {
        assert_eq!(refresh_before(Duration::from_secs(3600)), REFRESH_BEFORE);
        assert_eq!(refresh_before(Duration::from_secs(600)), REFRESH_BEFORE);
        assert_eq!(
            refresh_before(Duration::from_secs(300)),
            Duration::from_secs(150)
        );
        let t = Token::new("x".into(), Instant::now(), Duration::from_secs(3600));
        assert_eq!(t.expires_at - t.refresh_at, REFRESH_BEFORE);
        // An absurd expires_in neither panics nor is believed.
        let t = Token::new("x".into(), Instant::now(), Duration::from_secs(u64::MAX));
        assert!(t.expires_at <= Instant::now() + MAX_LIFETIME);
    }

    #[test]
    fn token_debug_hides_the_value() {
        let t = Token::new(
            "ya29.secret".into(),
            Instant::now(),
            Duration::from_secs(60),
        );
        assert!(!format!("{t:?}").contains("ya29"));
        assert_eq!(t.value(), "ya29.secret");
    }

    #[tokio::test]
    async fn fresh_token_is_returned_without_a_fetch() {
        let cache = TokenCache::new();
        let t = cache
            .get(|| async { Ok(("first".to_owned(), Duration::from_secs(3600))) })
            .await
            .unwrap();
        assert_eq!(t.value(), "first");
        let t = cache
            .get(|| async { panic!("a fresh token was fetched again") })
            .await
            .unwrap();
        assert_eq!(t.value(), "first");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_gets_on_an_empty_cache_fetch_once() {
        let cache = Arc::new(TokenCache::new());
        let fetches = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..100 {
            let (cache, fetches) = (cache.clone(), fetches.clone());
            tasks.push(tokio::spawn(async move {
                cache
                    .get(|| async move {
                        fetches.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Ok(("tok".to_owned(), Duration::from_secs(3600)))
                    })
                    .await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap().value(), "tok");
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn failed_refresh_returns_the_still_valid_old_token() {
        let cache = TokenCache::new();
        cache.put(token(Duration::ZERO, Duration::from_secs(120), "old"));
        let t = cache
            .get(|| async { Err(AuthError::Unreachable("down".into())) })
            .await
            .unwrap();
        assert_eq!(t.value(), "old");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn expired_token_and_failed_fetch_give_every_waiter_the_error_from_one_fetch() {
        let cache = Arc::new(TokenCache::new());
        cache.put(token(Duration::ZERO, Duration::ZERO, "expired"));
        let fetches = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let (cache, fetches) = (cache.clone(), fetches.clone());
            tasks.push(tokio::spawn(async move {
                cache
                    .get(|| async move {
                        fetches.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Err(AuthError::Rejected {
                            status: 401,
                            detail: "invalid_client".into(),
                        })
                    })
                    .await
            }));
        }
        for t in tasks {
            assert_eq!(
                t.await.unwrap().unwrap_err(),
                AuthError::Rejected {
                    status: 401,
                    detail: "invalid_client".into()
                }
            );
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn invalidate_forces_a_fetch() {
        let cache = TokenCache::new();
        cache
            .get(|| async { Ok(("first".to_owned(), Duration::from_secs(3600))) })
            .await
            .unwrap();
        cache.invalidate();
        let t = cache
            .get(|| async { Ok(("second".to_owned(), Duration::from_secs(3600))) })
            .await
            .unwrap();
        assert_eq!(t.value(), "second");
        // An invalidated token is not a fallback for a failed fetch.
        cache.invalidate();
        let e = cache
            .get(|| async { Err(AuthError::Unreachable("down".into())) })
            .await
            .unwrap_err();
        assert_eq!(e, AuthError::Unreachable("down".into()));
    }

    #[test]
    fn caches_are_per_key_and_bounded() {
        let caches = TokenCaches::new();
        let a = caches.cache([1; 32]);
        assert!(Arc::ptr_eq(&a, &caches.cache([1; 32])));
        assert!(!Arc::ptr_eq(&a, &caches.cache([2; 32])));
        for i in 0..(MAX_CACHES + 10) {
            let mut k = [0u8; 32];
            k[..8].copy_from_slice(&(i as u64).to_le_bytes());
            k[31] = 9;
            caches.cache(k);
        }
        assert_eq!(caches.len(), MAX_CACHES);
    }

    #[test]
    fn scrub_removes_secrets_and_cuts() {
        let s = scrub("bad secret abc+/def echoed abc%2B%2Fdef", &["abc+/def"]);
        assert_eq!(s, "bad secret *** echoed ***");
        let long = format!(
            "{}SECRETVALUE{}",
            "x".repeat(DETAIL_MAX - 4),
            "y".repeat(500)
        );
        let s = scrub(&long, &["SECRETVALUE"]);
        assert!(!s.contains("SECR"), "{s}");
        assert_eq!(s.chars().count(), DETAIL_MAX + 1);
        assert!(s.ends_with("x***y…"), "{s}");
    }
}

/// A token endpoint on 127.0.0.1 for the exchanges' tests.
#[cfg(test)]
pub(crate) mod tests_support {
    use std::sync::Arc;

    use axum::body::Bytes;
    use axum::http::{StatusCode, Uri};

    #[derive(Clone)]
    pub enum Answer {
        /// 200 with a token that expires in 3599 seconds.
        Token,
        /// This status and body.
        Status(u16, String),
        /// 401 `invalid_client` whose description echoes every value of the form.
        Echo,
    }

    /// A client as Keyward builds them: no proxy, no redirects.
    pub fn client() -> reqwest::Client {
        crate::providers::egress::client_builder().build().unwrap()
    }

    /// What the server saw last: the request's path and its form body.
    pub type Seen = Arc<parking_lot::Mutex<Option<(String, String)>>>;

    /// Serves `answer` to every POST; returns its URL (`http://127.0.0.1:port/token`).
    pub async fn token_server(answer: Answer) -> (String, Seen) {
        let seen: Seen = Arc::default();
        let s = seen.clone();
        let app = axum::Router::new().fallback(move |uri: Uri, body: Bytes| {
            let (answer, s) = (answer.clone(), s.clone());
            async move {
                let form = String::from_utf8_lossy(&body).into_owned();
                *s.lock() = Some((uri.path().to_owned(), form.clone()));
                match answer {
                    Answer::Token => (
                        StatusCode::OK,
                        r#"{"access_token":"ya29.test-token","expires_in":3599,"token_type":"Bearer"}"#
                            .to_owned(),
                    ),
                    Answer::Status(code, body) => {
                        (StatusCode::from_u16(code).unwrap(), body)
                    }
                    Answer::Echo => {
                        let values: Vec<(String, String)> =
                            serde_urlencoded::from_str(&form).unwrap();
                        let echoed: Vec<String> = values.into_iter().map(|(_, v)| v).collect();
                        let description = format!(
                            "AADSTS7000215: Invalid client secret provided. Got {}",
                            echoed.join(" ")
                        );
                        (
                            StatusCode::UNAUTHORIZED,
                            serde_json::json!({
                                "error": "invalid_client",
                                "error_description": description,
                            })
                            .to_string(),
                        )
                    }
                }
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}/token"), seen)
    }
}
