//! URLs and HTTP client errors as they may be logged or put in an error message.
//!
//! A URL can carry a secret in any part: a password in its user info, a token in its path
//! (a webhook's `https://hooks.example/services/T0/B0/XXXX`), a key in its query
//! (`?key=…`, `?password=…`). reqwest adds the whole URL to the text of every error it
//! returns (`… for url (https://…)`), so neither a URL nor such an error is ever logged
//! with `%`/`?` directly: it goes through one of these functions first.

use std::error::Error;

const HIDDEN: &str = "***";

/// Query parameters of a database URL whose value is not a secret and helps an operator
/// tell one database from another.
const PLAIN_DB_PARAMS: &[&str] = &[
    "sslmode",
    "ssl-mode",
    "application_name",
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "statement-cache-capacity",
    "mode",
    "cache",
];

/// A database URL for messages: user, host, port and database name kept; the password and
/// the value of any query parameter not known to be plain replaced by `***`. Text that is
/// not a URL is hidden whole, as it may be anything.
pub fn database_url(url: &str) -> String {
    if let Some(path) = url.strip_prefix("sqlite:") {
        // A file path: no secret, and operators need it. A query is dropped all the same.
        return format!("sqlite:{}", path.split('?').next().unwrap_or(""));
    }
    let Ok(mut u) = reqwest::Url::parse(url) else {
        return HIDDEN.to_owned();
    };
    if u.password().is_some() {
        let _ = u.set_password(Some(HIDDEN));
    }
    if u.query().is_some() {
        let pairs: Vec<(String, String)> = u
            .query_pairs()
            .map(|(k, v)| {
                let v = if PLAIN_DB_PARAMS.contains(&k.as_ref()) {
                    v.into_owned()
                } else {
                    HIDDEN.to_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        u.query_pairs_mut().clear().extend_pairs(pairs);
    }
    u.set_fragment(None);
    u.to_string()
}

/// An HTTP endpoint for messages: scheme, host and port only, with `/…` standing for a
/// path or query that was left out. Enough to tell which endpoint failed, nothing that
/// could be its secret.
pub fn endpoint(url: &str) -> String {
    let Ok(u) = reqwest::Url::parse(url) else {
        return HIDDEN.to_owned();
    };
    origin(&u)
}

fn origin(u: &reqwest::Url) -> String {
    let host = u.host_str().unwrap_or("");
    let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
    let rest = if (u.path().is_empty() || u.path() == "/") && u.query().is_none() {
        ""
    } else {
        "/…"
    };
    format!("{}://{host}{port}{rest}", u.scheme())
}

/// A reqwest error without its URL: what kind of failure, where (scheme, host and port),
/// and the chain of causes underneath (which name no URL).
pub fn http_error(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    if let Some(u) = e.url() {
        let full = u.as_str();
        text = text.replace(&format!(" for url ({full})"), "");
        text = text.replace(full, HIDDEN);
        text.push_str(" to ");
        text.push_str(&origin(u));
    }
    let mut cause: Option<&dyn Error> = e.source();
    while let Some(c) = cause {
        let mut part = c.to_string();
        if let Some(u) = e.url() {
            part = part.replace(u.as_str(), HIDDEN);
        }
        if !part.is_empty() && !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls_keep_where_and_lose_every_secret() {
        assert_eq!(
            database_url(
                "postgres://app:s3cret-PW@db.internal:5433/keyward?sslmode=require&password=qs-secret&application_name=kw"
            ),
            "postgres://app:***@db.internal:5433/keyward?sslmode=require&password=***&application_name=kw"
        );
        assert_eq!(
            database_url("postgresql://db/keyward?passwd=typo-secret&options=-c%20x"),
            "postgresql://db/keyward?passwd=***&options=***"
        );
        assert_eq!(
            database_url("postgres://u@h/d"),
            "postgres://u@h/d",
            "nothing to hide"
        );
        assert_eq!(
            database_url("sqlite:///var/lib/keyward/keyward.db"),
            "sqlite:///var/lib/keyward/keyward.db"
        );
        assert_eq!(database_url("not a url s3cret"), "***");
        // A password holding `@`, percent-encoded or not.
        let r = database_url("postgres://u:p%40ss@h/d");
        assert!(!r.contains("p%40ss") && !r.contains("p@ss"), "{r}");
    }

    #[test]
    fn endpoints_keep_only_the_origin() {
        assert_eq!(
            endpoint("https://hooks.example/services/T0/B0/XXXXsecret?token=abc"),
            "https://hooks.example/…"
        );
        assert_eq!(endpoint("http://127.0.0.1:9/"), "http://127.0.0.1:9");
        assert_eq!(endpoint("https://u:pw@h.example"), "https://h.example");
        assert_eq!(endpoint("secret"), "***");
    }

    #[tokio::test]
    async fn an_http_error_names_the_host_but_not_the_path_or_query() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let url = format!("http://127.0.0.1:{port}/hook/PATH-SECRET?token=QUERY-SECRET");
        let e = crate::net::client_builder()
            .build()
            .unwrap()
            .get(&url)
            .send()
            .await
            .unwrap_err();
        assert!(
            e.to_string().contains("PATH-SECRET"),
            "reqwest adds the URL"
        );
        let text = http_error(&e);
        assert!(
            !text.contains("SECRET") && text.contains(&format!("127.0.0.1:{port}")),
            "{text}"
        );
    }
}
