//! AWS Signature Version 4 (Bedrock), computed by the `aws-sigv4` crate: this module only
//! checks its inputs and hands back the headers to add.

use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings};
use aws_smithy_runtime_api::client::identity::Identity;
use zeroize::Zeroizing;

use super::AuthError;

/// An IAM access key, and the session token of temporary credentials.
#[derive(Clone)]
pub struct AwsCredentials {
    access_key_id: String,
    secret_access_key: Zeroizing<String>,
    session_token: Option<Zeroizing<String>>,
}

impl std::fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"***")
            .field("session_token", &self.session_token.as_ref().map(|_| "***"))
            .finish()
    }
}

impl AwsCredentials {
    /// The access key id (not a secret: it names the key, as `AKIA…` or `ASIA…`).
    pub fn access_key_id(&self) -> &str {
        &self.access_key_id
    }

    /// The secret access key: only for scrubbing it from what a provider answers.
    pub fn secret_access_key(&self) -> &str {
        &self.secret_access_key
    }

    /// The session token of temporary credentials.
    pub fn session_token(&self) -> Option<&str> {
        self.session_token.as_ref().map(|t| t.as_str())
    }

    /// Whether these are temporary credentials, with a session token.
    pub fn has_session_token(&self) -> bool {
        self.session_token.is_some()
    }
}

/// `{"access_key_id", "secret_access_key", "session_token"?}`: an access key id of 16 to
/// 128 characters `A-Z0-9`, a non-empty secret. No error message quotes a value.
pub fn parse(json: &str) -> Result<AwsCredentials, AuthError> {
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| {
        AuthError::Invalid(format!(
            "the AWS credentials are not JSON (line {}, column {})",
            e.line(),
            e.column()
        ))
    })?;
    let field = |k: &str| -> Result<Option<String>, AuthError> {
        match v.get(k) {
            Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
            Some(serde_json::Value::Null) | None => Ok(None),
            Some(_) => Err(AuthError::Invalid(format!(
                "the AWS credentials' `{k}` is not a string"
            ))),
        }
    };
    if !v.is_object() {
        return Err(AuthError::Invalid(
            "the AWS credentials are not a JSON object".into(),
        ));
    }
    let access_key_id = field("access_key_id")?
        .ok_or_else(|| AuthError::Invalid("the AWS credentials have no `access_key_id`".into()))?;
    if !(16..=128).contains(&access_key_id.len())
        || !access_key_id
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
    {
        return Err(AuthError::Invalid(
            "the AWS access_key_id is not 16 to 128 characters A-Z and 0-9".into(),
        ));
    }
    let secret_access_key = Zeroizing::new(field("secret_access_key")?.ok_or_else(|| {
        AuthError::Invalid("the AWS credentials have no `secret_access_key`".into())
    })?);
    if secret_access_key.is_empty() {
        return Err(AuthError::Invalid(
            "the AWS secret_access_key is empty".into(),
        ));
    }
    let session_token = field("session_token")?
        .filter(|t| !t.is_empty())
        .map(Zeroizing::new);
    Ok(AwsCredentials {
        access_key_id,
        secret_access_key,
        session_token,
    })
}

/// Whether `region` looks like an AWS region (`us-east-1`): 1 to 32 lowercase letters,
/// digits and `-`.
pub fn valid_region(region: &str) -> bool {
    (1..=32).contains(&region.len())
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Whether `service` looks like a signing name (`bedrock`): 1 to 64 lowercase letters,
/// digits and `-`.
fn valid_service(service: &str) -> bool {
    (1..=64).contains(&service.len())
        && service
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Signs a request with SigV4 in its headers and returns the headers to add to it:
/// `authorization`, `x-amz-date`, and `x-amz-security-token` when the credentials have a
/// session token (names lowercase). The body is hashed into the signature
/// (`SignableBody::Bytes`); no `x-amz-content-sha256` is added (the default settings do
/// not ask for it).
///
/// `url` must be absolute http(s) with a host, and is signed as the URL crate normalises
/// it — the form reqwest sends. `headers` are the request's other headers that are to be
/// signed (`host` may be among them; otherwise it is taken from `url`). `region` and
/// `service` are checked (lowercase letters, digits, `-`), else [`AuthError::Invalid`].
#[allow(clippy::too_many_arguments)]
pub fn sign(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    region: &str,
    service: &str,
    creds: &AwsCredentials,
    time: SystemTime,
) -> Result<Vec<(String, String)>, AuthError> {
    if !valid_region(region) {
        return Err(AuthError::Invalid(
            "the AWS region is not 1 to 32 characters a-z, 0-9 and '-'".into(),
        ));
    }
    if !valid_service(service) {
        return Err(AuthError::Invalid(
            "the AWS service name is not 1 to 64 characters a-z, 0-9 and '-'".into(),
        ));
    }
    if method.is_empty() || method.len() > 16 || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(AuthError::Invalid("the HTTP method is not A-Z".into()));
    }
    // aws-sigv4 panics on a URI without a host: make sure there is one.
    let u = reqwest::Url::parse(url)
        .map_err(|_| AuthError::Invalid("the URL to sign is not an absolute URL".into()))?;
    if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none_or(str::is_empty) {
        return Err(AuthError::Invalid(
            "the URL to sign is not an http(s) URL with a host".into(),
        ));
    }
    let identity: Identity = Credentials::new(
        creds.access_key_id.clone(),
        creds.secret_access_key.as_str(),
        creds.session_token.as_ref().map(|t| t.as_str().to_owned()),
        None,
        "keyward",
    )
    .into();
    let params: aws_sigv4::http_request::SigningParams<'_> =
        aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&identity)
            .region(region)
            .name(service)
            .time(time)
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| AuthError::Invalid(format!("SigV4 parameters: {e}")))?
            .into();
    let request = SignableRequest::new(
        method,
        u.as_str(),
        headers.iter().copied(),
        SignableBody::Bytes(body),
    )
    .map_err(|_| AuthError::Invalid("the request cannot be signed (its URL)".into()))?;
    let (instructions, _signature) = aws_sigv4::http_request::sign(request, &params)
        .map_err(|_| {
            AuthError::Invalid("the request cannot be signed (a header or the key)".into())
        })?
        .into_parts();
    Ok(instructions
        .headers()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The credentials of AWS's SigV4 test suite (`aws-signing-test-suite/v4/*/context.json`
    /// in the aws-sigv4 crate).
    fn suite_creds(session_token: Option<&str>) -> AwsCredentials {
        AwsCredentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: Zeroizing::new("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into()),
            session_token: session_token.map(|t| Zeroizing::new(t.to_owned())),
        }
    }

    /// 2015-08-30T12:36:00Z.
    fn suite_time() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_440_938_160)
    }

    fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn aws_test_suite_get_vanilla_and_post_vanilla() {
        // header-signed-request.txt of v4/get-vanilla and v4/post-vanilla.
        for (method, signature) in [
            (
                "GET",
                "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
            ),
            (
                "POST",
                "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b",
            ),
        ] {
            let headers = sign(
                method,
                "https://example.amazonaws.com/",
                &[("Host", "example.amazonaws.com")],
                b"",
                "us-east-1",
                "service",
                &suite_creds(None),
                suite_time(),
            )
            .unwrap();
            assert_eq!(
                header(&headers, "authorization"),
                Some(
                    format!(
                        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature={signature}"
                    )
                    .as_str()
                ),
                "{method}"
            );
            assert_eq!(header(&headers, "x-amz-date"), Some("20150830T123600Z"));
            assert_eq!(header(&headers, "x-amz-security-token"), None);
            assert_eq!(header(&headers, "x-amz-content-sha256"), None);
            // Without a host header the URL's host is signed: the same signature.
            let without_host = sign(
                method,
                "https://example.amazonaws.com/",
                &[],
                b"",
                "us-east-1",
                "service",
                &suite_creds(None),
                suite_time(),
            )
            .unwrap();
            assert_eq!(without_host, headers);
        }
    }

    #[test]
    fn session_token_adds_its_header() {
        let headers = sign(
            "POST",
            "https://bedrock-runtime.us-east-1.amazonaws.com/model/m/converse",
            &[("content-type", "application/json")],
            b"{}",
            "us-east-1",
            "bedrock",
            &suite_creds(Some("FwoGZXIvYXdzEXAMPLETOKEN")),
            suite_time(),
        )
        .unwrap();
        assert_eq!(
            header(&headers, "x-amz-security-token"),
            Some("FwoGZXIvYXdzEXAMPLETOKEN")
        );
        let auth = header(&headers, "authorization").unwrap();
        assert!(
            auth.contains("SignedHeaders=content-type;host;x-amz-date;x-amz-security-token,"),
            "{auth}"
        );
    }

    #[test]
    fn bad_input_is_invalid() {
        let creds = suite_creds(None);
        let t = suite_time();
        let url = "https://example.amazonaws.com/";
        for region in [
            "",
            "US-EAST-1",
            "us east 1",
            "us-east-1/../x",
            &"a".repeat(33),
        ] {
            let e = sign("GET", url, &[], b"", region, "service", &creds, t).unwrap_err();
            assert!(matches!(e, AuthError::Invalid(_)), "{region}: {e:?}");
        }
        for url in ["/relative", "file:///etc/passwd", "not a url"] {
            let e = sign("GET", url, &[], b"", "us-east-1", "service", &creds, t).unwrap_err();
            assert!(matches!(e, AuthError::Invalid(_)), "{url}: {e:?}");
        }
        let e = sign("GET", url, &[], b"", "us-east-1", "Service!", &creds, t).unwrap_err();
        assert!(matches!(e, AuthError::Invalid(_)));
        let e = sign("G ET", url, &[], b"", "us-east-1", "service", &creds, t).unwrap_err();
        assert!(matches!(e, AuthError::Invalid(_)));
    }

    #[test]
    fn parse_checks_and_hides() {
        let c = parse(
            r#"{"access_key_id":"AKIAIOSFODNN7EXAMPLE","secret_access_key":"wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}"#,
        )
        .unwrap();
        assert_eq!(c.access_key_id(), "AKIAIOSFODNN7EXAMPLE");
        assert!(!c.has_session_token());
        assert!(!format!("{c:?}").contains("wJalr"));
        let c = parse(
            r#"{"access_key_id":"ASIAIOSFODNN7EXAMPLE","secret_access_key":"s","session_token":"FQoSESSIONVALUE"}"#,
        )
        .unwrap();
        assert!(c.has_session_token());
        assert!(!format!("{c:?}").contains("FQoSESSION"));
        for bad in [
            r#"{"access_key_id":"AKIDEXAMPLE","secret_access_key":"s"}"#,
            r#"{"access_key_id":"akiaiosfodnn7example","secret_access_key":"s"}"#,
            r#"{"access_key_id":"AKIAIOSFODNN7EXAMPLE","secret_access_key":""}"#,
            r#"{"access_key_id":"AKIAIOSFODNN7EXAMPLE"}"#,
            r#"{"secret_access_key":"s"}"#,
            r#"["AKIAIOSFODNN7EXAMPLE"]"#,
            r#"{"access_key_id":"AKIAIOSFODNN7EXAMPLE","secret_access_key":"s3cr3t""#,
        ] {
            let e = parse(bad).unwrap_err();
            assert!(matches!(e, AuthError::Invalid(_)), "{bad}");
            assert!(!e.to_string().contains("s3cr3t"));
        }
    }
}
