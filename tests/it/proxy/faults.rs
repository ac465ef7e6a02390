//! Upstream faults beyond `refusals::upstream_failures_get_502_and_504` (which checks the
//! status and outcome of a refused connection, a reset before the answer and a slow first
//! byte): here each fault is a raw TCP provider that counts its open connections, and each
//! case checks the status, the `key.used` outcome, and that neither a connection nor a
//! task outlives the request: the runtime's alive tasks and the provider's open
//! connections come back to what they were after a warm-up request of the same fault.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use keyward_events::{Event, ProviderKind, UsageOutcome};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Gw, KeySpec, OPENAI_CREDENTIAL, Reply, chat, mock};

#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Headers and part of a JSON body, then the connection closes.
    ResetMidBody,
    /// One SSE chunk, then the connection closes.
    ResetMidStream,
    /// Reads the request and never answers.
    SlowFirstByte,
    /// 500 with an OpenAI error body, keep-alive.
    ServerError,
    /// 200 `application/json` whose body is not JSON.
    MalformedJson,
    /// An SSE chunk every 10 ms, forever.
    EndlessStream,
    /// A chunked JSON body that never ends.
    EndlessBody,
}

/// A provider that misbehaves as told and counts its open connections.
struct FaultServer {
    addr: SocketAddr,
    open: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Open(Arc<AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Reads one request (head and a `content-length` body); false at end of stream.
async fn read_request(s: &mut TcpStream) -> bool {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    true
}

/// Waits until the peer closes (or 60 s, so a leak shows as a count, not a hang).
async fn until_closed(s: &mut TcpStream) {
    let mut b = [0u8; 1024];
    let _ = tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(n) = s.read(&mut b).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

fn chunk(data: &str) -> String {
    format!("{:x}\r\n{data}\r\n", data.len())
}

fn sse_chunk(content: &str) -> String {
    format!(
        "data: {}\n\n",
        json!({"id":"chatcmpl-f","object":"chat.completion.chunk","created":1,"model":"m",
               "choices":[{"index":0,"delta":{"content":content},"finish_reason":null}]})
    )
}

async fn serve(mut s: TcpStream, fault: Fault) {
    loop {
        if !read_request(&mut s).await {
            return;
        }
        match fault {
            Fault::ResetMidBody => {
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 400\r\n\r\n{\"id\":\"chatcmpl-1\",\"choi")
                    .await;
                return;
            }
            Fault::ResetMidStream => {
                let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
                let _ = s
                    .write_all(format!("{head}{}", chunk(&sse_chunk("Hel"))).as_bytes())
                    .await;
                tokio::time::sleep(Duration::from_millis(20)).await;
                return;
            }
            Fault::SlowFirstByte => {
                until_closed(&mut s).await;
                return;
            }
            Fault::ServerError => {
                let body = json!({"error": {"message": "The server had an error while processing your request.",
                    "type": "server_error", "param": null, "code": null}})
                .to_string();
                let r = format!(
                    "HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                if s.write_all(r.as_bytes()).await.is_err() {
                    return;
                }
            }
            Fault::MalformedJson => {
                let body = "{\"id\": \"chatcmpl-1\", \"choices\": [{\"message\": ";
                let r = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                if s.write_all(r.as_bytes()).await.is_err() {
                    return;
                }
            }
            Fault::EndlessStream | Fault::EndlessBody => {
                let (ct, piece) = match fault {
                    Fault::EndlessStream => ("text/event-stream", sse_chunk("more ")),
                    _ => ("application/json", "          ".to_owned()),
                };
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: {ct}\r\ntransfer-encoding: chunked\r\n\r\n"
                );
                if s.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                loop {
                    if s.write_all(chunk(&piece).as_bytes()).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }
}

impl FaultServer {
    async fn start(fault: Fault) -> FaultServer {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let open = Arc::new(AtomicUsize::new(0));
        let counter = open.clone();
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let guard = Open(counter.clone());
                tokio::spawn(async move {
                    let _guard = guard;
                    serve(s, fault).await;
                });
            }
        });
        FaultServer { addr, open, task }
    }

    fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// Polls (up to 30 s: a loaded machine is slow, a leak is forever) until the alive tasks
/// and the provider's open connections are back to the baseline.
async fn settles(tasks: usize, server: Option<(&FaultServer, usize)>, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let t = alive_tasks();
        let c = server.map(|(s, _)| s.open());
        let conns_ok = server.is_none_or(|(s, base)| s.open() <= base);
        if t <= tasks && conns_ok {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: {t} tasks alive (baseline {tasks}), open connections {c:?} (baseline {:?})",
            server.map(|(_, b)| b)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Generous timeouts, so that a loaded machine does not turn a fault into a timeout,
/// except the first byte's when that is the fault.
async fn gateway_with(first_byte: Duration) -> Gw {
    Gw::start_with(|c| {
        c.upstream_first_byte_timeout = first_byte;
        c.upstream_idle_timeout = Duration::from_secs(5);
        c.upstream_max_duration = Duration::from_secs(1);
    })
    .await
}

async fn gateway() -> Gw {
    gateway_with(Duration::from_secs(30)).await
}

async fn key_for(gw: &Gw, base: &str) -> String {
    let p = gw
        .provider(
            ProviderKind::Openai,
            base,
            json!({}),
            &[],
            Some(OPENAI_CREDENTIAL),
        )
        .await;
    gw.key(KeySpec::on(&p)).await.1
}

fn stream_chat() -> serde_json::Value {
    json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "Hello"}]})
}

/// The outcomes of the `key.used` events after the first `skip`.
async fn outcomes(gw: &Gw, skip: usize, n: usize) -> Vec<(UsageOutcome, u16)> {
    gw.events("key.used", skip + n)
        .await
        .into_iter()
        .skip(skip)
        .map(|e| match e {
            Event::KeyUsed(u) => (u.outcome, u.status),
            other => panic!("{other:?}"),
        })
        .collect()
}

/// Runs `rounds` concurrent requests as a warm-up (filling the connection pool as far as
/// this fault lets it), takes the baseline, runs `rounds` more, and checks that tasks and
/// connections come back to the baseline: the second round reuses what the first left
/// and adds nothing. Every reply is `check`ed, and every request has its `key.used` with
/// `outcome` and `status`.
async fn no_leak(
    gw: &Gw,
    server: Option<&FaultServer>,
    secret: &str,
    body: serde_json::Value,
    rounds: usize,
    (outcome, status): (UsageOutcome, u16),
    check: impl Fn(&Reply),
) {
    let what = format!("{outcome:?}");
    let mut used = 0;
    let mut baseline = None;
    for round in 0..2 {
        let replies = futures::future::join_all(
            (0..rounds).map(|_| gw.post("/v1/chat/completions", secret, body.clone())),
        )
        .await;
        for r in &replies {
            check(r);
        }
        let got = outcomes(gw, used, rounds).await;
        assert_eq!(got.len(), rounds, "{what}: {got:?}");
        assert!(
            got.iter().all(|&(o, s)| o == outcome && s == status),
            "{what}: {got:?}"
        );
        used += rounds;
        match baseline {
            None => {
                // The warm-up's own short-lived tasks (the fault server's handlers of
                // closed connections, a meter's record) end first.
                tokio::time::sleep(Duration::from_millis(300)).await;
                baseline = Some((alive_tasks(), server.map_or(0, FaultServer::open)));
            }
            Some((tasks, conns)) => {
                let what = format!("{what}, round {round}");
                settles(tasks, server.map(|s| (s, conns)), &what).await;
            }
        }
    }
}

#[tokio::test]
async fn connection_refused_leaks_nothing() {
    let gw = gateway().await;
    let secret = key_for(&gw, &format!("http://{}/v1", mock::refused_addr().await)).await;
    no_leak(
        &gw,
        None,
        &secret,
        chat("m"),
        8,
        (UsageOutcome::UpstreamUnavailable, 502),
        |r| r.assert_error(502, "upstream_unavailable"),
    )
    .await;
}

#[tokio::test]
async fn reset_mid_body_gets_502() {
    let gw = gateway().await;
    let s = FaultServer::start(Fault::ResetMidBody).await;
    let secret = key_for(&gw, &format!("http://{}/v1", s.addr)).await;
    no_leak(
        &gw,
        Some(&s),
        &secret,
        chat("m"),
        8,
        (UsageOutcome::UpstreamUnavailable, 502),
        |r| r.assert_error(502, "upstream_unavailable"),
    )
    .await;
    assert_eq!(s.open(), 0);
}

#[tokio::test]
async fn reset_mid_stream_ends_the_stream_with_an_error_event() {
    let gw = gateway().await;
    let s = FaultServer::start(Fault::ResetMidStream).await;
    let secret = key_for(&gw, &format!("http://{}/v1", s.addr)).await;
    no_leak(
        &gw,
        Some(&s),
        &secret,
        stream_chat(),
        8,
        (UsageOutcome::UpstreamUnavailable, 200),
        |r| {
            assert_eq!(r.status.as_u16(), 200);
            let data = r.sse_data();
            assert!(data[0].contains("Hel"), "{data:?}");
            let last: serde_json::Value = serde_json::from_str(data.last().unwrap()).unwrap();
            assert_eq!(last["error"]["code"], "upstream_unavailable", "{data:?}");
            assert_eq!(last["error"]["type"], "api_error");
        },
    )
    .await;
    assert_eq!(s.open(), 0);
}

#[tokio::test]
async fn slow_first_byte_gets_504_and_the_connection_is_closed() {
    let gw = gateway_with(Duration::from_millis(500)).await;
    let s = FaultServer::start(Fault::SlowFirstByte).await;
    let secret = key_for(&gw, &format!("http://{}/v1", s.addr)).await;
    no_leak(
        &gw,
        Some(&s),
        &secret,
        chat("m"),
        8,
        (UsageOutcome::UpstreamTimeout, 504),
        |r| r.assert_error(504, "upstream_timeout"),
    )
    .await;
    assert_eq!(s.open(), 0, "the proxy kept a timed-out connection open");
}

#[tokio::test]
async fn a_5xx_storm_is_passed_through_and_reuses_connections() {
    let gw = gateway().await;
    let s = FaultServer::start(Fault::ServerError).await;
    let secret = key_for(&gw, &format!("http://{}/v1", s.addr)).await;
    no_leak(
        &gw,
        Some(&s),
        &secret,
        chat("m"),
        50,
        (UsageOutcome::UpstreamError, 500),
        |r| {
            assert_eq!(r.status.as_u16(), 500, "{}", r.text());
            assert_eq!(r.json()["error"]["type"], "server_error");
        },
    )
    .await;
    assert!(
        s.open() <= 50,
        "{} connections open after two storms of 50",
        s.open()
    );
}

#[tokio::test]
async fn malformed_json_from_the_provider_gets_502() {
    let gw = gateway().await;
    let s = FaultServer::start(Fault::MalformedJson).await;
    let secret = key_for(&gw, &format!("http://{}/v1", s.addr)).await;
    no_leak(
        &gw,
        Some(&s),
        &secret,
        chat("m"),
        8,
        (UsageOutcome::UpstreamError, 502),
        |r| r.assert_error(502, "upstream_invalid_response"),
    )
    .await;
}

#[tokio::test]
async fn an_endless_stream_is_cut_off_at_the_maximum_duration() {
    let gw = gateway().await;
    let s = FaultServer::start(Fault::EndlessStream).await;
    let secret = key_for(&gw, &format!("http://{}/v1", s.addr)).await;
    no_leak(
        &gw,
        Some(&s),
        &secret,
        stream_chat(),
        4,
        (UsageOutcome::UpstreamTimeout, 200),
        |r| {
            assert_eq!(r.status.as_u16(), 200);
            let data = r.sse_data();
            assert!(data.len() > 2, "{data:?}");
            let last: serde_json::Value = serde_json::from_str(data.last().unwrap()).unwrap();
            assert_eq!(last["error"]["code"], "upstream_timeout", "{last}");
            assert_eq!(
                last["error"]["message"],
                "the provider's answer ran past the maximum duration"
            );
        },
    )
    .await;
    assert_eq!(s.open(), 0, "the proxy kept reading an endless stream");
}

#[tokio::test]
async fn an_endless_body_is_cut_off_with_504() {
    let gw = gateway().await;
    let s = FaultServer::start(Fault::EndlessBody).await;
    let secret = key_for(&gw, &format!("http://{}/v1", s.addr)).await;
    no_leak(
        &gw,
        Some(&s),
        &secret,
        chat("m"),
        4,
        (UsageOutcome::UpstreamTimeout, 504),
        |r| r.assert_error(504, "upstream_timeout"),
    )
    .await;
    assert_eq!(s.open(), 0, "the proxy kept reading an endless body");
}
