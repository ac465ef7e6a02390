//! Where every outbound HTTP client of Keyward starts, below every layer that makes one (the
//! providers' clients, the notice webhook's): no environment proxy, which would resolve a
//! provider's name past the SSRF guard (`providers::egress`), and no redirects, which could
//! carry a credential header to another host. A unit test in `providers::egress` checks
//! that no client in `src` is built any other way.

pub fn client_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
}
