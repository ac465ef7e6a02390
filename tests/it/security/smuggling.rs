//! Request smuggling and routing tricks, sent raw over TCP to a real listener where a
//! client library would normalise them. Routing and authentication are decided on the
//! path the router matched; each trick is refused or handled as that path says.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::proxy::{Gw, KeySpec};

async fn listen(gw: &Gw) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let app = keyward::app(gw.state.clone());
    tokio::spawn(async move {
        let _ = axum::serve(l, app.into_make_service_with_connect_info::<SocketAddr>()).await;
    });
    addr
}

/// Writes `request` as is and reads until the server closes or is quiet for 5 s; returns
/// the status of every response seen, in order, and the raw text.
async fn raw(addr: SocketAddr, request: &str) -> (Vec<u16>, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let statuses = text
        .split("HTTP/1.1 ")
        .skip(1)
        .filter_map(|r| r.get(..3).and_then(|c| c.parse().ok()))
        .collect();
    (statuses, text)
}

fn get(target: &str, host: &str, auth: Option<&str>) -> String {
    let auth = auth.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
    format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: close\r\n\r\n")
}

#[tokio::test]
async fn routing_tricks_are_refused_or_routed_by_the_real_path() {
    let gw = Gw::start().await;
    let admin = format!("Bearer {}", gw.t.admin_secret());
    let addr = listen(&gw).await;
    let host = addr.to_string();

    // Each: the request target, the Host header, with the admin key?, the one status.
    let cases: Vec<(&str, String, bool, u16)> = vec![
        // A Host that looks like a path or carries a query or fragment changes nothing.
        ("/api/v1/keys", format!("{host}/healthz?"), false, 401),
        ("/api/v1/keys", format!("{host}/healthz#"), false, 401),
        ("/healthz", format!("{host}/api/v1/keys?x=#"), false, 200),
        ("/api/v1/me", format!("{host}/?"), true, 200),
        // A doubled slash is another path: no route, and no way around auth.
        ("//api/v1/keys", host.clone(), false, 404),
        ("//api/v1/keys", host.clone(), true, 404),
        ("/api/v1//keys", host.clone(), false, 404),
        // Dot segments, plain or percent-encoded, are not resolved into another route.
        ("/v1/chat/../../api/v1/users", host.clone(), false, 404),
        ("/v1/chat/../../api/v1/users", host.clone(), true, 404),
        ("/api/v1/%2e%2e/healthz", host.clone(), false, 404),
        ("/healthz/%2e%2e/api/v1/users", host.clone(), false, 404),
        ("/api/v1/keys/%2e%2e", host.clone(), false, 401),
        ("/api/v1/keys/%2e%2e", host.clone(), true, 404),
        ("/api/v1/keys/..%2fusers", host.clone(), true, 404),
        ("/api/v1/users/%2e%2e%2fkeys", host.clone(), true, 404),
        // An absolute-form target is routed by its path; its authority is not a host to reach.
        ("http://169.254.169.254/api/v1/me", host.clone(), false, 401),
        ("http://169.254.169.254/api/v1/me", host.clone(), true, 200),
        ("http://evil.example//api/v1/keys", host.clone(), false, 404),
    ];
    for (target, host_header, with_admin, want) in cases {
        let auth = with_admin.then_some(admin.as_str());
        let (statuses, text) = raw(addr, &get(target, &host_header, auth)).await;
        assert_eq!(
            statuses,
            vec![want],
            "{target} (Host: {host_header}, admin: {with_admin}):\n{text}"
        );
    }
}

#[tokio::test]
async fn authorization_is_exact_about_its_header() {
    let gw = Gw::start().await;
    let admin_secret = gw.t.admin_secret();
    let addr = listen(&gw).await;
    let host = addr.to_string();
    let p = gw.openai(&["gpt-4o-mini"]).await;
    let (_, chat_key) = gw.key(KeySpec::on(&p)).await;

    let request = |target: &str, auth_lines: &[String]| {
        let auth: String = auth_lines.iter().map(|l| format!("{l}\r\n")).collect();
        format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: close\r\n\r\n")
    };
    let cases: Vec<(&str, Vec<String>, u16)> = vec![
        // The scheme is case-insensitive (RFC 9110), on both surfaces.
        (
            "/api/v1/me",
            vec![format!("Authorization: BEARER {admin_secret}")],
            200,
        ),
        (
            "/api/v1/me",
            vec![format!("authorization: bEaReR {admin_secret}")],
            200,
        ),
        (
            "/v1/models",
            vec![format!("Authorization: BEARER {chat_key}")],
            200,
        ),
        // Two Authorization headers are ambiguous, whichever is valid and in what order.
        (
            "/api/v1/me",
            vec![
                format!("Authorization: Bearer {admin_secret}"),
                "Authorization: Bearer kw_nonsense".to_owned(),
            ],
            401,
        ),
        (
            "/api/v1/me",
            vec![
                format!("Authorization: Bearer {admin_secret}"),
                format!("Authorization: Bearer {admin_secret}"),
            ],
            401,
        ),
        (
            "/v1/models",
            vec![
                "Authorization: Bearer kw_nonsense".to_owned(),
                format!("Authorization: Bearer {chat_key}"),
            ],
            401,
        ),
        (
            "/v1/models",
            vec![
                format!("x-api-key: {chat_key}"),
                format!("x-api-key: {chat_key}"),
            ],
            401,
        ),
        // A comma-joined pair in one header is not a key either.
        (
            "/api/v1/me",
            vec![format!(
                "Authorization: Bearer {admin_secret}, Bearer {admin_secret}"
            )],
            401,
        ),
        // Other schemes, and the key with no scheme.
        (
            "/api/v1/me",
            vec![format!("Authorization: Basic {admin_secret}")],
            401,
        ),
        (
            "/api/v1/me",
            vec![format!("Authorization: {admin_secret}")],
            401,
        ),
        (
            "/api/v1/me",
            vec![format!("Authorization: Bearer{admin_secret}")],
            401,
        ),
        // The management API takes a key only from Authorization.
        (
            "/api/v1/me",
            vec![format!("x-api-key: {admin_secret}")],
            401,
        ),
    ];
    for (target, lines, want) in cases {
        let (statuses, text) = raw(addr, &request(target, &lines)).await;
        assert_eq!(statuses, vec![want], "{target} {lines:?}:\n{text}");
    }
}

#[tokio::test]
async fn a_second_request_cannot_be_smuggled_in_a_body() {
    let gw = Gw::start().await;
    let addr = listen(&gw).await;
    let host = addr.to_string();
    let head = gw.state.0.live.head().seq;
    let smuggled = format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n");

    // Content-Length and Transfer-Encoding together: the body is read as chunked (the
    // length is ignored) and the connection is closed after the answer (RFC 9112 6.3), so
    // what follows the last chunk is never read as a request.
    let body = format!("0\r\n\r\n{smuggled}");
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n{body}"
    );
    let (statuses, text) = raw(addr, &req).await;
    assert_eq!(statuses, vec![401], "{text}");
    assert!(text.contains("connection: close"), "{text}");
    assert!(
        !text.contains("\"status\":\"ok\""),
        "the smuggled request ran:\n{text}"
    );

    // Two Content-Length headers that disagree.
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Length: 2\r\nContent-Length: 40\r\n\r\n{{}}{smuggled}"
    );
    let (statuses, text) = raw(addr, &req).await;
    assert_eq!(statuses, vec![400], "{text}");

    // A Transfer-Encoding that is not plain `chunked`.
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{smuggled}"
    );
    let (statuses, text) = raw(addr, &req).await;
    assert!(
        statuses.first().is_some_and(|s| *s == 400 || *s == 501) && statuses.len() == 1,
        "{statuses:?}\n{text}"
    );

    assert_eq!(
        gw.state.0.live.head().seq,
        head,
        "a refused request wrote an event"
    );
}
