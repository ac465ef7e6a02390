//! OpenAI, and every provider that speaks OpenAI's API at a base URL of its own: Groq,
//! Gemini's OpenAI-compatible endpoint, and any other (`openai_compatible`). The
//! credential is a bearer token.

use async_trait::async_trait;
use keyward_events::ProviderKind;
use keyward_projections::ProviderRecord;

use super::wire::{self, Dialect, Endpoint};
use super::{AuthorizeError, Framing, Kind, Outgoing, ProxyError, Route, Upstreams, WireSecret};
use crate::crypto::ProviderSecret;

/// One OpenAI-format kind.
pub struct OpenAiFormat {
    kind: ProviderKind,
    label: &'static str,
    base_url: &'static str,
}

pub static OPENAI: OpenAiFormat = OpenAiFormat {
    kind: ProviderKind::Openai,
    label: "OpenAI",
    base_url: "https://api.openai.com/v1",
};
pub static GROQ: OpenAiFormat = OpenAiFormat {
    kind: ProviderKind::Groq,
    label: "Groq",
    base_url: "https://api.groq.com/openai/v1",
};
pub static GEMINI: OpenAiFormat = OpenAiFormat {
    kind: ProviderKind::Gemini,
    label: "Google Gemini (API key)",
    base_url: "https://generativelanguage.googleapis.com/v1beta/openai",
};
pub static COMPATIBLE: OpenAiFormat = OpenAiFormat {
    kind: ProviderKind::OpenaiCompatible,
    label: "OpenAI-compatible",
    base_url: "",
};

#[async_trait]
impl Kind for OpenAiFormat {
    fn kind(&self) -> ProviderKind {
        self.kind
    }

    fn label(&self) -> &'static str {
        self.label
    }

    fn default_base_url(&self) -> &'static str {
        self.base_url
    }

    fn offers(&self, ep: Endpoint) -> bool {
        ep != Endpoint::Messages
    }

    fn route(
        &self,
        p: &ProviderRecord,
        ep: Endpoint,
        _model: &str,
        _stream: bool,
    ) -> Result<Route, ProxyError> {
        Ok(Route {
            url: wire::join(&p.base_url, wire::openai_path(ep))?,
            dialect: Dialect::OpenAi,
            framing: Framing::Sse,
            anthropic_body: None,
        })
    }

    async fn authorize(
        &self,
        _up: &Upstreams,
        _p: &ProviderRecord,
        secret: &ProviderSecret,
        req: &mut Outgoing,
    ) -> Result<Option<WireSecret>, AuthorizeError> {
        super::put_bearer(&mut req.headers, secret.expose())?;
        Ok(None)
    }
}
