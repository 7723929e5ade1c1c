//! The SSRF guard: a rule's HTTP call goes only to allowed hosts, and, unless the operator
//! allows it, only to public addresses. Names are checked where they are resolved (a resolver
//! that drops non-public addresses, so a name cannot be re-pointed at 127.0.0.1 between a check
//! and the connection), literal addresses and redirects before they are followed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Whether an address is on the public internet: not loopback, private (RFC 1918, unique
/// local), link-local, shared (CGNAT), unspecified, broadcast, multicast, documentation,
/// benchmarking or reserved.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            let s = v6.segments();
            let v4 = |hi: u16, lo: u16| {
                Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8)
            };
            if s[0] == 0x2002 {
                // 6to4: the IPv4 address is in the next 32 bits.
                return is_public_v4(v4(s[1], s[2]));
            }
            if s[0] == 0x2001 && s[1] == 0 {
                // Teredo: the server's IPv4 address, then the client's, inverted, last.
                return is_public_v4(v4(s[2], s[3])) && is_public_v4(v4(!s[6], !s[7]));
            }
            if s[..6] == [0x0064, 0xff9b, 0, 0, 0, 0] {
                // NAT64's well-known prefix: the IPv4 address it translates to, last.
                return is_public_v4(v4(s[6], s[7]));
            }
            if s[..4] == [0, 0, 0, 0] && s[4] == 0xffff && s[5] == 0 {
                // IPv4-translated (`::ffff:0:a.b.c.d`, SIIT).
                return is_public_v4(v4(s[6], s[7]));
            }
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80 // link-local
                || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
                || (s[0] == 0x0064 && s[1] == 0xff9b) // NAT64's local-use prefix: a local network
                || (s[0] == 0x0100 && s[1..4] == [0, 0, 0]) // discard-only
                || is_v4_compatible(v6))
        }
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || (a == 192 && b == 88 && c == 99) // 6to4 relay anycast
        || a >= 240) // reserved
}

fn is_v4_compatible(v6: Ipv6Addr) -> bool {
    let s = v6.segments();
    s[..6].iter().all(|x| *x == 0)
}

/// What a rule's HTTP call may reach.
#[derive(Debug, Clone)]
pub(crate) struct Guard {
    allow_hosts: Vec<String>,
    allow_private: bool,
}

impl Guard {
    pub(crate) fn new(allow_hosts: &[String], allow_private: bool) -> Guard {
        Guard {
            allow_hosts: allow_hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
            allow_private,
        }
    }

    /// Refuses a URL whose host is not allowed, or is a literal non-public address.
    pub(crate) fn check_url(&self, url: &url::Url) -> Result<(), String> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("scheme {:?} is not http(s)", url.scheme()));
        }
        let host = match url.host() {
            Some(host) => host,
            None => return Err("the URL has no host".to_owned()),
        };
        let name = match &host {
            url::Host::Domain(d) => d.to_ascii_lowercase(),
            url::Host::Ipv4(ip) => ip.to_string(),
            url::Host::Ipv6(ip) => ip.to_string(),
        };
        if !self.allow_hosts.is_empty() && !self.allow_hosts.iter().any(|a| host_matches(a, &name))
        {
            return Err(format!("host {name} is not in http.allow_hosts"));
        }
        let ip = match host {
            url::Host::Ipv4(ip) => Some(IpAddr::V4(ip)),
            url::Host::Ipv6(ip) => Some(IpAddr::V6(ip)),
            url::Host::Domain(_) => None,
        };
        if let Some(ip) = ip
            && !self.allow_private
            && !is_public(ip)
        {
            return Err(format!(
                "{ip} is not a public address (set http.allow_private to allow it)"
            ));
        }
        Ok(())
    }
}

fn host_matches(allowed: &str, host: &str) -> bool {
    match allowed.strip_prefix("*.") {
        Some(domain) => host
            .strip_suffix(domain)
            .is_some_and(|head| head.ends_with('.')),
        None => allowed == host,
    }
}

/// Why the guard refused a request: found in a reqwest error's sources, it makes the failure
/// permanent.
#[derive(Debug, thiserror::Error)]
#[error("refused by the SSRF guard: {0}")]
pub(crate) struct Refused(pub String);

/// Resolves names with the system resolver and keeps only public addresses (unless private
/// ones are allowed).
#[derive(Debug)]
pub(crate) struct GuardedResolver {
    pub(crate) allow_private: bool,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let kept: Vec<SocketAddr> = found
                .iter()
                .copied()
                .filter(|addr| allow_private || is_public(addr.ip()))
                .collect();
            if kept.is_empty() && !found.is_empty() {
                let refused: Box<dyn std::error::Error + Send + Sync> = Box::new(Refused(format!(
                    "{host} resolves only to non-public addresses ({}); set http.allow_private to allow them",
                    found
                        .iter()
                        .map(|a| a.ip().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
                return Err(refused);
            }
            let addrs: Addrs = Box::new(kept.into_iter());
            Ok(addrs)
        })
    }
}

pub(crate) fn resolver(allow_private: bool) -> Arc<GuardedResolver> {
    Arc::new(GuardedResolver { allow_private })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn only_public_addresses_are_public() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fc00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::7f00:1",
            "64:ff9b:1::a00:1",
            "fec0::1",
            "2002:7f00:1::",
            "2002:a9fe:a9fe::1",
            "100::1",
            "192.88.99.1",
            // Teredo: server 65.54.227.120, client 10.0.0.1 (inverted); or server private.
            "2001:0:4136:e378:8000:63bf:f5ff:fffe",
            "2001:0:a00:1:8000:63bf:a2cb:5a63",
            // NAT64 of 10.0.0.1, SIIT of 127.0.0.1, mapped 0.0.0.0/8.
            "64:ff9b::a00:1",
            "::ffff:0:7f00:1",
            "::ffff:0.1.2.3",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in [
            "93.184.216.34",
            "1.1.1.1",
            "2606:4700:4700::1111",
            "2002:5db8:d822::1",
            // Teredo: server 65.54.227.120, client 93.52.165.156 (inverted).
            "2001:0:4136:e378:8000:63bf:a2cb:5a63",
            // NAT64 of 93.184.216.34.
            "64:ff9b::5db8:d822",
        ] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn urls_are_checked_against_hosts_and_literal_addresses() {
        let url = |s: &str| url::Url::parse(s).unwrap();
        let open = Guard::new(&[], false);
        assert!(open.check_url(&url("https://hooks.example.com/x")).is_ok());
        assert!(open.check_url(&url("http://127.0.0.1:8080/x")).is_err());
        assert!(open.check_url(&url("http://[::1]/x")).is_err());
        assert!(
            open.check_url(&url("http://169.254.169.254/latest"))
                .is_err()
        );
        assert!(
            Guard::new(&[], true)
                .check_url(&url("http://127.0.0.1:8080/x"))
                .is_ok()
        );
        let listed = Guard::new(
            &["hooks.example.com".to_owned(), "*.shop.io".to_owned()],
            false,
        );
        assert!(listed.check_url(&url("https://HOOKS.example.com/")).is_ok());
        assert!(listed.check_url(&url("https://eu.shop.io/")).is_ok());
        assert!(listed.check_url(&url("https://shop.io/")).is_err());
        assert!(listed.check_url(&url("https://evilshop.io/")).is_err());
        assert!(listed.check_url(&url("https://example.com/")).is_err());
    }
}
