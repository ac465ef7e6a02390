//! Where Keyward may connect to reach a provider: the server-side request forgery guard.
//!
//! Three classes of address:
//! - never: link-local (169.254.0.0/16, fe80::/10, where the cloud metadata services
//!   live, fd00:ec2::254 included), "this network" (0.0.0.0/8, ::), multicast, broadcast
//!   and reserved ranges. No setting opens them.
//! - on an explicit allowlist only: loopback (127.0.0.0/8, ::1), private ranges (10/8,
//!   172.16/12, 192.168/16, fc00::/7) and shared address space (100.64/10), through
//!   `--upstream-allow` / `KEYWARD_UPSTREAM_ALLOW`.
//! - every other (public) address.
//!
//! IPv4-mapped, IPv4-compatible and NAT64 IPv6 forms are judged by the IPv4 address they
//! carry. Names are judged by what they resolve to, when a provider is registered and
//! again at every connection (the HTTP clients resolve through [`GuardedResolver`]), so a
//! DNS answer that changes later does not open a way in.
//!
//! Every outbound HTTP client of Keyward starts from [`client_builder`]: environment
//! proxies (`HTTP_PROXY`, `HTTPS_PROXY`, `ALL_PROXY` and their lower-case forms) are
//! ignored, because through a proxy the provider's name is resolved by the proxy, never by
//! the guard, and the request with its credential goes wherever the proxy sends it.
//! Keyward has no egress proxy setting: it connects directly, or not at all.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;

/// Why an address may not be connected to.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EgressError {
    #[error("{ip} is a link-local, metadata or reserved address, which Keyward never connects to")]
    Forbidden { ip: IpAddr },
    #[error(
        "{ip} is a loopback or private address; allow it with --upstream-allow (KEYWARD_UPSTREAM_ALLOW)"
    )]
    NotAllowed { ip: IpAddr },
    #[error("{host} resolves to no address Keyward may connect to ({reason})")]
    Name { host: String, reason: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Never,
    AllowlistOnly,
    Public,
}

/// The allowlist for loopback and private addresses. Empty by default.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    allow: Vec<IpNet>,
}

impl From<&crate::config::UpstreamAllow> for EgressPolicy {
    fn from(a: &crate::config::UpstreamAllow) -> EgressPolicy {
        EgressPolicy::new(a.allowlist().to_vec())
    }
}

impl fmt::Debug for EgressPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.allow.iter().map(|n| n.to_string()))
            .finish()
    }
}

/// The IPv4 address an IPv6 address carries, for the forms that reach an IPv4 host:
/// `::ffff:a.b.c.d` (mapped), `::a.b.c.d` (compatible, deprecated) and `64:ff9b::/96`
/// (NAT64).
fn embedded_v4(v6: &Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    let s = v6.segments();
    let tail = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if s[..6] == [0, 0, 0, 0, 0, 0] && !(s[6] == 0 && s[7] <= 1) {
        return Some(tail);
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(tail);
    }
    None
}

fn classify_v4(ip: Ipv4Addr) -> Class {
    let o = ip.octets();
    if o[0] == 0                                   // this network
        || ip.is_link_local()                      // 169.254/16: cloud metadata
        || ip.is_broadcast()
        || ip.is_multicast()
        || o[0] >= 240                             // reserved
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF protocol assignments
        || (o[0] == 198 && (o[1] == 18 || o[1] == 19))
    {
        return Class::Never;
    }
    if ip.is_loopback() || ip.is_private() || (o[0] == 100 && (64..128).contains(&o[1])) {
        return Class::AllowlistOnly;
    }
    Class::Public
}

fn classify(ip: IpAddr) -> Class {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = embedded_v4(&v6) {
                return classify_v4(v4);
            }
            let s = v6.segments();
            let documentation = s[0] == 0x2001 && s[1] == 0xdb8;
            let discard_only = s[0] == 0x100 && s[1..4] == [0, 0, 0];
            if documentation
                || discard_only
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xffc0) == 0xfe80 // link-local
                || (s[0] & 0xffc0) == 0xfec0 // site-local, deprecated
                // AWS's metadata service over IPv6
                || v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)
            {
                return Class::Never;
            }
            if v6.is_loopback() || (s[0] & 0xfe00) == 0xfc00 {
                return Class::AllowlistOnly;
            }
            Class::Public
        }
    }
}

impl EgressPolicy {
    pub fn new(allow: Vec<IpNet>) -> EgressPolicy {
        EgressPolicy { allow }
    }

    /// Parses `--upstream-allow`: CIDRs or single addresses, separated by commas.
    pub fn parse(spec: &str) -> Result<EgressPolicy, String> {
        crate::config::UpstreamAllow::parse(spec).map(|a| EgressPolicy::from(&a))
    }

    pub fn allowlist(&self) -> &[IpNet] {
        &self.allow
    }

    /// Whether Keyward may connect to this address.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), EgressError> {
        let ip = match ip {
            IpAddr::V6(v6) => embedded_v4(&v6).map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match classify(ip) {
            Class::Never => Err(EgressError::Forbidden { ip }),
            Class::Public => Ok(()),
            Class::AllowlistOnly => {
                if self.allow.iter().any(|n| n.contains(&ip)) {
                    Ok(())
                } else {
                    Err(EgressError::NotAllowed { ip })
                }
            }
        }
    }

    /// The check for a URL whose host is an address, in any spelling the URL parser
    /// accepts (decimal `2852039166`, hex `0xa9fea9fe`, IPv4-mapped IPv6…): the parser has
    /// already turned it into the address. A name passes here; it is judged when resolved.
    pub fn check_literal(&self, url: &reqwest::Url) -> Result<(), EgressError> {
        match url.host() {
            Some(url::Host::Ipv4(v4)) => self.check_ip(IpAddr::V4(v4)),
            Some(url::Host::Ipv6(v6)) => self.check_ip(IpAddr::V6(v6)),
            _ => Ok(()),
        }
    }

    /// The check at registration: an address is judged as it is; a name by every address
    /// it resolves to now, each of which must be permitted. A name that does not resolve
    /// is let through: the connection is checked again when it is made.
    pub async fn check_url(&self, url: &reqwest::Url) -> Result<(), EgressError> {
        self.check_literal(url)?;
        let Some(url::Host::Domain(host)) = url.host() else {
            return Ok(());
        };
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if host == "localhost" || host.ends_with(".localhost") {
            return self.check_ip(IpAddr::V4(Ipv4Addr::LOCALHOST));
        }
        let port = url.port_or_known_default().unwrap_or(443);
        if let Ok(addrs) = tokio::net::lookup_host((host.as_str(), port)).await {
            for a in addrs {
                self.check_ip(a.ip())?;
            }
        }
        Ok(())
    }

    /// The builder of a client that reaches providers: [`client_builder`] with this
    /// policy's resolver.
    pub fn client_builder(&self) -> reqwest::ClientBuilder {
        client_builder().dns_resolver(self.resolver())
    }

    /// A DNS resolver for reqwest that drops every address this policy refuses.
    pub fn resolver(&self) -> Arc<GuardedResolver> {
        Arc::new(GuardedResolver {
            policy: self.clone(),
        })
    }
}

pub use crate::net::client_builder;

/// Resolves through the system resolver and keeps only the addresses the policy permits;
/// a name with none left fails to resolve, so no connection is attempted.
pub struct GuardedResolver {
    policy: EgressPolicy,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refused = None;
            let kept: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| match policy.check_ip(a.ip()) {
                    Ok(()) => true,
                    Err(e) => {
                        refused = Some(e);
                        false
                    }
                })
                .collect();
            if kept.is_empty() {
                let reason = refused.map_or_else(|| "no address".to_owned(), |e| e.to_string());
                tracing::warn!(%host, %reason, "refused to connect to a provider address");
                let e: Box<dyn std::error::Error + Send + Sync> =
                    Box::new(EgressError::Name { host, reason });
                return Err(e);
            }
            let addrs: reqwest::dns::Addrs = Box::new(kept.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client built anywhere else could honour an environment proxy and skip the guard.
    #[test]
    fn every_outbound_client_is_built_from_client_builder() {
        fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    walk(&p, out);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    out.push(p);
                }
            }
        }
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        walk(&src, &mut files);
        assert!(files.len() > 20, "{files:?}");
        for f in files {
            // net.rs builds the one builder; this file names the needles.
            if f.ends_with("net.rs") || f.ends_with("providers/egress.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&f).unwrap();
            for needle in [
                "Client::builder(",
                "Client::new(",
                "ClientBuilder::new(",
                "reqwest::get(",
                "reqwest::Proxy",
            ] {
                assert!(
                    !text.contains(needle),
                    "{} builds an HTTP client itself ({needle}); use net::client_builder",
                    f.display()
                );
            }
        }
    }

    fn url(s: &str) -> reqwest::Url {
        reqwest::Url::parse(s).unwrap()
    }

    #[test]
    fn metadata_and_link_local_are_never_allowed_in_any_spelling() {
        let open = EgressPolicy::parse("0.0.0.0/0,::/0").unwrap();
        for s in [
            "http://169.254.169.254/latest",
            "http://169.254.0.1",
            "http://2852039166/",
            "http://0xa9fea9fe/",
            "http://0251.0376.0251.0376/",
            "http://169.254.43518/",
            "http://[::ffff:169.254.169.254]/",
            "http://[::ffff:a9fe:a9fe]/",
            "http://[64:ff9b::a9fe:a9fe]/",
            "http://[fd00:ec2::254]/",
            "http://[fe80::1]/",
            "http://0.0.0.0:8080/",
            "http://0/",
            "http://[::]/",
            "http://255.255.255.255/",
            "http://224.0.0.1/",
        ] {
            let e = open.check_literal(&url(s)).unwrap_err();
            assert!(matches!(e, EgressError::Forbidden { .. }), "{s}: {e:?}");
        }
    }

    #[test]
    fn loopback_and_private_need_the_allowlist() {
        let closed = EgressPolicy::default();
        let cases = [
            "http://127.0.0.1:8080",
            "http://127.1.2.3",
            "http://2130706433/",
            "http://0x7f000001/",
            "http://[::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://10.1.2.3",
            "http://172.16.0.1",
            "http://172.31.255.255",
            "http://192.168.1.1",
            "http://[fd12:3456::1]/",
            "http://[fc00::1]/",
            "http://100.64.0.1",
        ];
        for s in cases {
            let e = closed.check_literal(&url(s)).unwrap_err();
            assert!(matches!(e, EgressError::NotAllowed { .. }), "{s}: {e:?}");
        }
        let open = EgressPolicy::parse(
            "127.0.0.0/8, ::1, 10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fc00::/7,100.64.0.0/10",
        )
        .unwrap();
        for s in cases {
            assert_eq!(open.check_literal(&url(s)), Ok(()), "{s}");
        }
        let narrow = EgressPolicy::parse("127.0.0.1").unwrap();
        assert!(narrow.check_literal(&url("http://127.0.0.1:1")).is_ok());
        assert!(narrow.check_literal(&url("http://127.0.0.2")).is_err());
        assert!(narrow.check_literal(&url("http://10.0.0.1")).is_err());
    }

    #[test]
    fn public_addresses_and_names_pass_the_literal_check() {
        let closed = EgressPolicy::default();
        for s in [
            "https://api.openai.com/v1",
            "http://8.8.8.8",
            "http://172.32.0.1",
            "http://[2606:4700::1111]/",
            "http://169.253.255.255",
        ] {
            assert_eq!(closed.check_literal(&url(s)), Ok(()), "{s}");
        }
    }

    #[tokio::test]
    async fn localhost_names_are_loopback() {
        let closed = EgressPolicy::default();
        for s in [
            "http://localhost:9",
            "http://LOCALHOST./",
            "http://a.localhost/",
        ] {
            assert!(matches!(
                closed.check_url(&url(s)).await,
                Err(EgressError::NotAllowed { .. })
            ));
        }
        let open = EgressPolicy::parse("127.0.0.0/8").unwrap();
        assert_eq!(open.check_url(&url("http://localhost:9")).await, Ok(()));
    }

    #[test]
    fn the_allowlist_is_parsed_and_bad_entries_named() {
        assert_eq!(EgressPolicy::parse("").unwrap().allowlist(), &[]);
        assert_eq!(
            EgressPolicy::parse("10.1.2.3/8").unwrap().allowlist()[0].to_string(),
            "10.0.0.0/8"
        );
        assert!(
            EgressPolicy::parse("10.0.0.0/33")
                .unwrap_err()
                .contains("10.0.0.0/33")
        );
        assert!(EgressPolicy::parse("example.com").is_err());
    }
}
