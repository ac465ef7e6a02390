//! Brute force against the proxy: from one address a loop of guesses is throttled with 429
//! (`proxy::refusals` shows the guess is then not even looked up); spread over many
//! addresses every guess is refused with 401, costs one checksum, one hash and one map
//! lookup (measured by `benches/refusal.rs`), and writes nothing. A client cannot pick its
//! own address with `X-Forwarded-For` or similar headers.

use std::net::SocketAddr;

use axum::extract::ConnectInfo;
use keyward::crypto::Secret;

use crate::proxy::{Gw, Reply, chat, post};

fn from(
    ip: [u8; 4],
    mut req: axum::http::Request<axum::body::Body>,
) -> axum::http::Request<axum::body::Body> {
    req.extensions_mut()
        .insert(ConnectInfo(SocketAddr::from((ip, 5555))));
    req
}

#[tokio::test]
async fn guesses_spread_over_many_addresses_are_each_refused_and_write_nothing() {
    let gw = Gw::start_with(|c| c.auth_failures_per_second = 3).await;
    let head = gw.state.0.live.head().seq;
    let mut refused = 0;
    for i in 0..300u32 {
        let ip = [10, (i >> 16) as u8, (i >> 8) as u8, i as u8];
        let guess = Secret::generate();
        let r = Reply::read(
            gw.call(from(
                ip,
                post("/v1/chat/completions", guess.expose(), chat("m")),
            ))
            .await,
        )
        .await;
        r.assert_error(401, "invalid_api_key");
        refused += 1;
    }
    assert_eq!(refused, 300);
    // Malformed guesses are refused on their checksum, before any lookup.
    for i in 0..50u8 {
        let r = Reply::read(
            gw.call(from(
                [172, 16, 1, i],
                post(
                    "/v1/chat/completions",
                    &format!("kw_{}", "A".repeat(49)),
                    chat("m"),
                ),
            ))
            .await,
        )
        .await;
        r.assert_error(401, "invalid_api_key");
        assert!(r.text().contains("malformed"), "{}", r.text());
    }
    // Unknown keys have no stream to record a refusal on: the log is untouched.
    assert_eq!(gw.state.0.live.head().seq, head);
}

#[tokio::test]
async fn forwarded_headers_do_not_give_a_guesser_new_addresses() {
    let gw = Gw::start_with(|c| c.auth_failures_per_second = 3).await;
    let attacker = [203, 0, 113, 50];
    let mut statuses = Vec::new();
    for i in 0..6u8 {
        let mut req = from(
            attacker,
            post(
                "/v1/chat/completions",
                Secret::generate().expose(),
                chat("m"),
            ),
        );
        let fake = format!("198.51.100.{i}");
        for h in [
            "x-forwarded-for",
            "x-real-ip",
            "true-client-ip",
            "cf-connecting-ip",
        ] {
            req.headers_mut().insert(h, fake.parse().unwrap());
        }
        req.headers_mut()
            .insert("forwarded", format!("for={fake}").parse().unwrap());
        statuses.push(Reply::read(gw.call(req).await).await.status.as_u16());
    }
    assert_eq!(statuses, vec![401, 401, 401, 429, 429, 429]);
}
