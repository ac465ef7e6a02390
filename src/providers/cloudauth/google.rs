//! Vertex AI: a Google service account's key exchanged for an OAuth access token (the
//! JWT-bearer grant of RFC 7523, as Google's own libraries do it).

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use zeroize::Zeroizing;

use super::AuthError;

/// The scope Vertex AI's API takes.
pub const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

/// The grant type of a signed-assertion exchange.
const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// How long an assertion is valid for (Google's maximum).
const ASSERTION_LIFETIME: i64 = 3600;

/// The fields of a service account's JSON key file that the exchange uses.
#[derive(Clone)]
pub struct ServiceAccount {
    pub client_email: String,
    pub private_key_id: String,
    /// The RSA private key, PEM. Never logged: `Debug` shows `***`.
    pub private_key: Zeroizing<String>,
    pub token_uri: String,
    pub project_id: Option<String>,
}

impl std::fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("client_email", &self.client_email)
            .field("private_key_id", &self.private_key_id)
            .field("private_key", &"***")
            .field("token_uri", &self.token_uri)
            .field("project_id", &self.project_id)
            .finish()
    }
}

/// A service account's JSON key file, as Google's console downloads it: `"type":
/// "service_account"`, an RSA private key in PEM that signs, and an absolute http(s)
/// `token_uri`. No error message quotes a value from the file.
pub fn parse(json: &str) -> Result<ServiceAccount, AuthError> {
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| {
        AuthError::Invalid(format!(
            "the service account key is not JSON (line {}, column {})",
            e.line(),
            e.column()
        ))
    })?;
    if !v.is_object() {
        return Err(AuthError::Invalid(
            "the service account key is not a JSON object".into(),
        ));
    }
    let field = |k: &str| -> Result<String, AuthError> {
        match v.get(k) {
            Some(serde_json::Value::String(s)) if !s.is_empty() => Ok(s.clone()),
            Some(_) => Err(AuthError::Invalid(format!(
                "the service account key's `{k}` is not a non-empty string"
            ))),
            None => Err(AuthError::Invalid(format!(
                "the service account key has no `{k}`"
            ))),
        }
    };
    if field("type")? != "service_account" {
        return Err(AuthError::Invalid(
            "the key's `type` is not \"service_account\"".into(),
        ));
    }
    let sa = ServiceAccount {
        client_email: field("client_email")?,
        private_key_id: field("private_key_id")?,
        private_key: Zeroizing::new(field("private_key")?),
        token_uri: field("token_uri")?,
        project_id: match v.get("project_id") {
            Some(serde_json::Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(serde_json::Value::Null) | None => None,
            Some(_) => {
                return Err(AuthError::Invalid(
                    "the service account key's `project_id` is not a string".into(),
                ));
            }
        },
    };
    super::token_endpoint(&sa.token_uri, "the service account key's `token_uri`")?;
    // Sign once now, so that a key jsonwebtoken takes but cannot sign with fails here and
    // not on the first request.
    assertion(&sa, SCOPE, 0)?;
    Ok(sa)
}

#[derive(serde::Serialize)]
struct Claims<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: i64,
    exp: i64,
}

/// The signed JWT the token endpoint takes: RS256, `kid` = the key's id, `iss` = the
/// service account's email, `scope`, `aud` = its `token_uri`, `iat` = `now_unix` and `exp`
/// an hour later. (No `sub`: that is for domain-wide delegation.)
pub fn assertion(sa: &ServiceAccount, scope: &str, now_unix: i64) -> Result<String, AuthError> {
    let key = EncodingKey::from_rsa_pem(sa.private_key.as_bytes()).map_err(|_| {
        AuthError::Invalid("the service account's private_key is not an RSA PEM key".into())
    })?;
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(sa.private_key_id.clone());
    let claims = Claims {
        iss: &sa.client_email,
        scope,
        aud: &sa.token_uri,
        iat: now_unix,
        exp: now_unix.saturating_add(ASSERTION_LIFETIME),
    };
    jsonwebtoken::encode(&header, &claims, &key).map_err(|_| {
        AuthError::Invalid("the service account's private_key cannot sign (RS256)".into())
    })
}

/// Exchanges a fresh assertion (scope [`SCOPE`], issued at `now_unix`) for an access
/// token at `sa.token_uri`: `(access_token, expires_in)`.
///
/// A 400/401/403 is [`AuthError::Rejected`] with Google's `error`/`error_description`;
/// another non-2xx answer, a connect error or a timeout is [`AuthError::Unreachable`].
///
/// `client` must be built not to follow redirects (and with a timeout): a redirect would
/// carry the assertion to another host. One it does not follow is `Unreachable` here.
pub async fn exchange(
    client: &reqwest::Client,
    sa: &ServiceAccount,
    now_unix: i64,
) -> Result<(String, Duration), AuthError> {
    let url = super::token_endpoint(&sa.token_uri, "the service account key's `token_uri`")?;
    let jwt = Zeroizing::new(assertion(sa, SCOPE, now_unix)?);
    let form = [("grant_type", GRANT_TYPE), ("assertion", jwt.as_str())];
    super::post_token_form(client, url, &form, &[jwt.as_str(), sa.private_key.as_str()]).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::cloudauth::tests_support::{Answer, client, token_server};

    const FIXTURE: &str = include_str!("../../../tests/fixtures/vertex-test-service-account.json");
    const PUBLIC: &str =
        include_str!("../../../tests/fixtures/vertex-test-service-account.pub.pem");

    fn now() -> i64 {
        chrono::Utc::now().timestamp()
    }

    #[test]
    fn parses_the_fixture_and_hides_the_key() {
        let sa = parse(FIXTURE).unwrap();
        assert_eq!(
            sa.client_email,
            "keyward-test@keyward-test.iam.gserviceaccount.com"
        );
        assert_eq!(sa.project_id.as_deref(), Some("keyward-test"));
        assert_eq!(sa.token_uri, "https://oauth2.googleapis.com/token");
        assert!(!format!("{sa:?}").contains("PRIVATE KEY"));
    }

    #[test]
    fn rejects_unusable_keys_without_quoting_them() {
        let mut v: serde_json::Value = serde_json::from_str(FIXTURE).unwrap();
        v["type"] = "authorized_user".into();
        assert!(matches!(parse(&v.to_string()), Err(AuthError::Invalid(_))));

        let mut v: serde_json::Value = serde_json::from_str(FIXTURE).unwrap();
        v["private_key"] =
            "-----BEGIN PRIVATE KEY-----\nnotakey\n-----END PRIVATE KEY-----\n".into();
        let e = parse(&v.to_string()).unwrap_err();
        assert!(matches!(e, AuthError::Invalid(_)));
        assert!(!e.to_string().contains("notakey"));

        let mut v: serde_json::Value = serde_json::from_str(FIXTURE).unwrap();
        v["token_uri"] = "/token".into();
        assert!(matches!(parse(&v.to_string()), Err(AuthError::Invalid(_))));
        v["token_uri"] = "file:///etc/passwd".into();
        assert!(matches!(parse(&v.to_string()), Err(AuthError::Invalid(_))));

        let mut v: serde_json::Value = serde_json::from_str(FIXTURE).unwrap();
        v.as_object_mut().unwrap().remove("client_email");
        assert!(matches!(parse(&v.to_string()), Err(AuthError::Invalid(_))));

        let e = parse("{\"private_key\": \"-----BEGIN").unwrap_err();
        assert!(!e.to_string().contains("BEGIN"));
    }

    #[test]
    fn assertion_verifies_with_the_public_key() {
        #[derive(serde::Deserialize)]
        struct Got {
            iss: String,
            scope: String,
            aud: String,
            iat: i64,
            exp: i64,
        }
        let sa = parse(FIXTURE).unwrap();
        let t = now();
        let jwt = assertion(&sa, SCOPE, t).unwrap();
        let key = jsonwebtoken::DecodingKey::from_rsa_pem(PUBLIC.as_bytes()).unwrap();
        let mut validation = jsonwebtoken::Validation::new(Algorithm::RS256);
        validation.set_audience(&[sa.token_uri.as_str()]);
        validation.set_issuer(&[sa.client_email.as_str()]);
        let got = jsonwebtoken::decode::<Got>(&jwt, &key, &validation).unwrap();
        assert_eq!(got.header.kid.as_deref(), Some(sa.private_key_id.as_str()));
        assert_eq!(got.header.alg, Algorithm::RS256);
        assert_eq!(got.claims.iss, sa.client_email);
        assert_eq!(got.claims.scope, SCOPE);
        assert_eq!(got.claims.aud, sa.token_uri);
        assert_eq!(got.claims.iat, t);
        assert_eq!(got.claims.exp, t + 3600);
    }

    fn with_uri(uri: &str) -> ServiceAccount {
        let mut sa = parse(FIXTURE).unwrap();
        sa.token_uri = uri.to_owned();
        sa
    }

    #[tokio::test]
    async fn exchange_gets_a_token() {
        let (url, seen) = token_server(Answer::Token).await;
        let sa = with_uri(&url);
        let client = client();
        let (tok, ttl) = exchange(&client, &sa, now()).await.unwrap();
        assert_eq!(tok, "ya29.test-token");
        assert_eq!(ttl, Duration::from_secs(3599));
        let (path, form) = seen.lock().clone().unwrap();
        assert_eq!(path, "/token");
        let form: std::collections::HashMap<String, String> =
            serde_urlencoded::from_str(&form).unwrap();
        assert_eq!(form["grant_type"], GRANT_TYPE);
        let key = jsonwebtoken::DecodingKey::from_rsa_pem(PUBLIC.as_bytes()).unwrap();
        let mut validation = jsonwebtoken::Validation::new(Algorithm::RS256);
        validation.set_audience(&[url.as_str()]);
        jsonwebtoken::decode::<serde_json::Value>(&form["assertion"], &key, &validation).unwrap();
    }

    #[tokio::test]
    async fn exchange_maps_refusals_and_outages() {
        let client = client();
        let (url, _) = token_server(Answer::Status(
            400,
            "{\"error\":\"invalid_grant\",\"error_description\":\"Invalid JWT Signature.\"}".into(),
        ))
        .await;
        let e = exchange(&client, &with_uri(&url), now()).await.unwrap_err();
        assert_eq!(
            e,
            AuthError::Rejected {
                status: 400,
                detail: "invalid_grant: Invalid JWT Signature.".into()
            }
        );
        let (url, _) = token_server(Answer::Echo).await;
        let e = exchange(&client, &with_uri(&url), now()).await.unwrap_err();
        let AuthError::Rejected {
            status: 401,
            detail,
        } = &e
        else {
            panic!("{e:?}")
        };
        assert!(detail.contains("***"), "{detail}");
        assert!(!detail.contains("eyJ"), "{detail}");

        let (url, _) = token_server(Answer::Status(500, "oops".into())).await;
        let e = exchange(&client, &with_uri(&url), now()).await.unwrap_err();
        assert_eq!(
            e,
            AuthError::Unreachable("token endpoint answered 500".into())
        );

        let (url, _) = token_server(Answer::Status(200, "{\"nope\":1}".into())).await;
        let e = exchange(&client, &with_uri(&url), now()).await.unwrap_err();
        assert!(matches!(e, AuthError::Invalid(_)));

        // Nothing listens there.
        let e = exchange(&client, &with_uri("http://127.0.0.1:9/token"), now())
            .await
            .unwrap_err();
        assert!(matches!(e, AuthError::Unreachable(_)), "{e:?}");
    }
}
