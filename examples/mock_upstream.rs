//! A minimal OpenAI-compatible upstream for the load benchmark: every
//! `POST /v1/chat/completions` gets the same chat completion with its usage block, and
//! `GET /v1/models` lists one model. Binds 127.0.0.1 only.
//!
//! `cargo run --release --example mock_upstream -- [port]` (default 18080)

use std::net::SocketAddr;

use axum::Router;
use axum::http::header;
use axum::routing::{get, post};

const CHAT: &str = include_str!("../tests/fixtures/openai-chat-completion.json");
const MODELS: &str =
    r#"{"object":"list","data":[{"id":"gpt-4o-mini","object":"model","owned_by":"mock"}]}"#;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let port: u16 = std::env::args()
        .nth(1)
        .map(|p| p.parse())
        .transpose()?
        .unwrap_or(18080);
    let app = Router::new()
        .route(
            "/v1/chat/completions",
            post(|| async { ([(header::CONTENT_TYPE, "application/json")], CHAT) }),
        )
        .route(
            "/v1/models",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], MODELS) }),
        );
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    eprintln!("mock upstream on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
