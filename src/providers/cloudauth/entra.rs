//! Azure OpenAI with Microsoft Entra ID: an app registration's client secret exchanged for
//! an access token (the OAuth 2.0 client-credentials grant, v2.0 endpoint).

use std::time::Duration;

use super::AuthError;

/// The scope Azure OpenAI (Cognitive Services) takes.
pub const SCOPE: &str = "https://cognitiveservices.azure.com/.default";

/// The public cloud's authority. Sovereign clouds have their own
/// (`https://login.microsoftonline.us`, `https://login.chinacloudapi.cn`).
pub const AUTHORITY: &str = "https://login.microsoftonline.com";

/// The most characters of a tenant id or domain.
const TENANT_MAX: usize = 100;

/// Whether `tenant` is a tenant GUID or a domain name (`contoso.onmicrosoft.com`):
/// 1 to 100 letters, digits, `-` and `.`, neither beginning nor ending with a `.` nor
/// holding `..`, so that it is one path segment and cannot climb out of it.
pub fn valid_tenant(tenant: &str) -> bool {
    !tenant.is_empty()
        && tenant.len() <= TENANT_MAX
        && tenant
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !tenant.starts_with('.')
        && !tenant.ends_with('.')
        && !tenant.contains("..")
}

/// Exchanges a client secret for an access token with scope [`SCOPE`] at
/// `{authority}/{tenant}/oauth2/v2.0/token`: `(access_token, expires_in)`.
///
/// A bad tenant, authority or empty client id/secret is [`AuthError::Invalid`] before
/// anything is sent. Entra's refusals (AADSTS errors: 401 `invalid_client` for a wrong or
/// expired secret, 400 `unauthorized_client` or `invalid_request` for an unknown app or
/// tenant) are [`AuthError::Rejected`] with the secret scrubbed out of their text; another
/// non-2xx answer, a connect error or a timeout is [`AuthError::Unreachable`].
///
/// `client` must be built not to follow redirects (and with a timeout): a redirect would
/// carry the secret to another host. One it does not follow is `Unreachable` here.
pub async fn exchange(
    client: &reqwest::Client,
    authority: &str,
    tenant: &str,
    client_id: &str,
    client_secret: &str,
) -> Result<(String, Duration), AuthError> {
    if !valid_tenant(tenant) {
        return Err(AuthError::Invalid(
            "the tenant is not a tenant id or domain name (letters, digits, '-', '.')".into(),
        ));
    }
    if client_id.trim().is_empty() {
        return Err(AuthError::Invalid("the client id is empty".into()));
    }
    if client_secret.is_empty() {
        return Err(AuthError::Invalid("the client secret is empty".into()));
    }
    let base = super::token_endpoint(authority, "the Entra authority")?;
    if base.query().is_some() || base.fragment().is_some() {
        return Err(AuthError::Invalid(
            "the Entra authority has a query or fragment".into(),
        ));
    }
    let url = format!(
        "{}/{tenant}/oauth2/v2.0/token",
        base.as_str().trim_end_matches('/')
    );
    let url = super::token_endpoint(&url, "the Entra token endpoint")?;
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", client_id),
        ("client_secret", client_secret),
        ("scope", SCOPE),
    ];
    super::post_token_form(client, url, &form, &[client_secret]).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::cloudauth::tests_support::{Answer, client, token_server};

    const SECRET: &str = "Zx8Q~abc.DEF_ghi+jkl/mno~pqrSTUvwxYZ0123";
    const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";

    /// The authority of a test server's URL (`http://127.0.0.1:port`).
    fn authority(url: &str) -> String {
        url.trim_end_matches("/token").to_owned()
    }

    #[test]
    fn tenants() {
        assert!(valid_tenant(TENANT));
        assert!(valid_tenant("contoso.onmicrosoft.com"));
        for bad in [
            "",
            "..",
            ".",
            "a/../b",
            "contoso.com/x",
            "a?b",
            "a#b",
            "a%2F",
            ".contoso",
            "contoso.",
            "a..b",
            "tenant with space",
            &"a".repeat(101),
        ] {
            assert!(!valid_tenant(bad), "{bad}");
        }
    }

    #[tokio::test]
    async fn exchange_gets_a_token() {
        let (url, seen) = token_server(Answer::Token).await;
        let client = client();
        let (tok, ttl) = exchange(&client, &authority(&url), TENANT, "app-id", SECRET)
            .await
            .unwrap();
        assert_eq!(tok, "ya29.test-token");
        assert_eq!(ttl, Duration::from_secs(3599));
        let (path, form) = seen.lock().clone().unwrap();
        assert_eq!(path, format!("/{TENANT}/oauth2/v2.0/token"));
        let form: std::collections::HashMap<String, String> =
            serde_urlencoded::from_str(&form).unwrap();
        assert_eq!(form["grant_type"], "client_credentials");
        assert_eq!(form["client_id"], "app-id");
        assert_eq!(form["client_secret"], SECRET);
        assert_eq!(form["scope"], SCOPE);
        // A trailing slash on the authority changes nothing.
        let with_slash = format!("{}/", authority(&url));
        exchange(&client, &with_slash, TENANT, "app-id", SECRET)
            .await
            .unwrap();
        assert_eq!(
            seen.lock().clone().unwrap().0,
            format!("/{TENANT}/oauth2/v2.0/token")
        );
    }

    #[tokio::test]
    async fn refusal_is_rejected_without_the_secret() {
        let client = client();
        let body = r#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided."}"#;
        let (url, _) = token_server(Answer::Status(401, body.into())).await;
        let e = exchange(&client, &authority(&url), TENANT, "app-id", SECRET)
            .await
            .unwrap_err();
        assert_eq!(
            e,
            AuthError::Rejected {
                status: 401,
                detail: "invalid_client: AADSTS7000215: Invalid client secret provided.".into()
            }
        );

        // A server that echoes the secret back.
        let (url, _) = token_server(Answer::Echo).await;
        let e = exchange(&client, &authority(&url), TENANT, "app-id", SECRET)
            .await
            .unwrap_err();
        let AuthError::Rejected {
            status: 401,
            detail,
        } = &e
        else {
            panic!("{e:?}")
        };
        assert!(
            detail.starts_with("invalid_client: AADSTS7000215"),
            "{detail}"
        );
        assert!(detail.contains("***"), "{detail}");
        assert!(!e.to_string().contains(SECRET), "{e}");
        assert!(!e.to_string().contains("Zx8Q~abc"), "{e}");

        let body = r#"{"error":"unauthorized_client","error_description":"AADSTS700016: Application with identifier 'app-id' was not found."}"#;
        let (url, _) = token_server(Answer::Status(400, body.into())).await;
        let e = exchange(&client, &authority(&url), TENANT, "app-id", SECRET)
            .await
            .unwrap_err();
        assert!(
            matches!(e, AuthError::Rejected { status: 400, .. }),
            "{e:?}"
        );
    }

    #[tokio::test]
    async fn outage_and_bad_input() {
        let client = client();
        let (url, _) = token_server(Answer::Status(500, SECRET.into())).await;
        let e = exchange(&client, &authority(&url), TENANT, "app-id", SECRET)
            .await
            .unwrap_err();
        assert_eq!(
            e,
            AuthError::Unreachable("token endpoint answered 500".into())
        );

        let (url, _) = token_server(Answer::Status(302, String::new())).await;
        let e = exchange(&client, &authority(&url), TENANT, "app-id", SECRET).await;
        // The client follows no redirect: a 3xx is an outage, the form goes nowhere else.
        assert!(matches!(e, Err(AuthError::Unreachable(_))), "{e:?}");

        for tenant in ["../x", "a/b", ""] {
            let e = exchange(&client, AUTHORITY, tenant, "app-id", SECRET)
                .await
                .unwrap_err();
            assert!(matches!(e, AuthError::Invalid(_)), "{e:?}");
        }
        let e = exchange(&client, "login.microsoftonline.com", TENANT, "id", SECRET)
            .await
            .unwrap_err();
        assert!(matches!(e, AuthError::Invalid(_)), "{e:?}");
        let e = exchange(&client, AUTHORITY, TENANT, "id", "")
            .await
            .unwrap_err();
        assert!(matches!(e, AuthError::Invalid(_)), "{e:?}");
    }
}
