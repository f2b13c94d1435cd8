//! The SSRF guard: endpoint URLs are chosen by users, so without it a user
//! could make Keel POST into its own network (databases, admin ports, the
//! cloud metadata service). Every URL is checked when an endpoint is
//! registered and again at each delivery, and the sender connects only to
//! addresses the guard resolved and passed ([`GuardedResolver`]), so a DNS
//! answer that changes between the check and the connection (rebinding)
//! gains nothing.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use url::{Host, Url};

/// The longest endpoint URL accepted, in characters.
pub const MAX_URL_LEN: usize = 2048;

/// Why the guard refused a URL; its `Display` tells the endpoint's owner
/// what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Longer than [`MAX_URL_LEN`] characters.
    TooLong {
        /// Its length in characters.
        len: usize,
    },
    /// Not an absolute URL.
    Invalid {
        /// What the URL parser said.
        reason: String,
    },
    /// A scheme other than `https` (or `http` where private addresses are
    /// allowed).
    Scheme {
        /// The scheme given.
        scheme: String,
        /// Whether plain `http` would have been accepted.
        http_allowed: bool,
    },
    /// No host to connect to.
    NoHost,
    /// A user name or password in the URL.
    UserInfo,
    /// The host is, or resolves to, an address Keel must not call.
    Forbidden {
        /// The host as written in the URL.
        host: String,
        /// The offending address.
        ip: IpAddr,
        /// What kind of address it is, e.g. "a loopback address".
        class: &'static str,
    },
    /// The name did not resolve.
    Unresolved {
        /// The host name.
        host: String,
        /// The resolver's error, or that it found no address.
        reason: String,
    },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::TooLong { len } => write!(f, "the URL is {len} characters; at most {MAX_URL_LEN} are allowed"),
            Refusal::Invalid { reason } => write!(f, "not an absolute URL ({reason})"),
            Refusal::Scheme {
                scheme,
                http_allowed: true,
            } => {
                write!(
                    f,
                    "the scheme is {scheme:?}; endpoints must be https:// or http:// URLs"
                )
            }
            Refusal::Scheme {
                scheme,
                http_allowed: false,
            } => {
                write!(f, "the scheme is {scheme:?}; endpoints must be https:// URLs")
            }
            Refusal::NoHost => f.write_str("the URL has no host"),
            Refusal::UserInfo => f.write_str("the URL holds a user name or password; endpoints may not"),
            Refusal::Forbidden { host, ip, class } => {
                let bare = host.trim_start_matches('[').trim_end_matches(']');
                if bare.parse::<IpAddr>().is_ok() {
                    write!(f, "{ip} is {class}; endpoints must be public")
                } else {
                    write!(f, "{host} resolves to {ip}, {class}; endpoints must be public")
                }
            }
            Refusal::Unresolved { host, reason } => write!(f, "{host} does not resolve ({reason})"),
        }
    }
}

impl std::error::Error for Refusal {}

/// Checks endpoint URLs and the addresses they resolve to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Guard {
    /// Accept plain `http://` and any address (local development and
    /// tests only).
    pub allow_private: bool,
}

impl Guard {
    /// Checks the URL's form: absolute, at most [`MAX_URL_LEN`] characters,
    /// `https` (or `http` when private addresses are allowed), a host, no
    /// user info, and not an IP literal Keel must not call. Names are not
    /// resolved here (see [`Guard::resolve`]).
    pub fn check_url(&self, raw: &str) -> Result<Url, Refusal> {
        let len = raw.chars().count();
        if len > MAX_URL_LEN {
            return Err(Refusal::TooLong { len });
        }
        let url = Url::parse(raw).map_err(|err| Refusal::Invalid {
            reason: err.to_string(),
        })?;
        match url.scheme() {
            "https" => {}
            "http" if self.allow_private => {}
            scheme => {
                return Err(Refusal::Scheme {
                    scheme: scheme.to_owned(),
                    http_allowed: self.allow_private,
                });
            }
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(Refusal::UserInfo);
        }
        let host = url.host_str().unwrap_or_default().to_owned();
        if let Some(ip) = literal(&url)? {
            self.check_ip(&host, ip)?;
        }
        Ok(url)
    }

    /// The addresses to connect to for `url`: its IP literal, or every
    /// address its name resolves to. Refused when any of them is forbidden
    /// (unless private addresses are allowed): a name with one public and
    /// one private address could be steered to either.
    pub async fn resolve(&self, url: &Url) -> Result<Vec<SocketAddr>, Refusal> {
        let host = url.host_str().ok_or(Refusal::NoHost)?;
        let port = url.port_or_known_default().ok_or(Refusal::NoHost)?;
        match literal(url)? {
            Some(ip) => {
                self.check_ip(host, ip)?;
                Ok(vec![SocketAddr::new(ip, port)])
            }
            None => self.resolve_name(host, port).await,
        }
    }

    /// Resolves `host` and checks every address.
    async fn resolve_name(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, Refusal> {
        let unresolved = |reason: String| Refusal::Unresolved {
            host: host.to_owned(),
            reason,
        };
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|err| unresolved(err.to_string()))?
            .collect();
        if addrs.is_empty() {
            return Err(unresolved("no address".into()));
        }
        for addr in &addrs {
            self.check_ip(host, addr.ip())?;
        }
        Ok(addrs)
    }

    fn check_ip(&self, host: &str, ip: IpAddr) -> Result<(), Refusal> {
        if self.allow_private {
            return Ok(());
        }
        match forbidden_class(ip) {
            Some(class) => Err(Refusal::Forbidden {
                host: host.to_owned(),
                ip,
                class,
            }),
            None => Ok(()),
        }
    }
}

/// The URL's host as an address, when it is an IP literal (the URL parser
/// has already normalised forms such as `0x7f.1` or `2130706433`).
fn literal(url: &Url) -> Result<Option<IpAddr>, Refusal> {
    match url.host() {
        None => Err(Refusal::NoHost),
        Some(Host::Domain(_)) => Ok(None),
        Some(Host::Ipv4(ip)) => Ok(Some(IpAddr::V4(ip))),
        Some(Host::Ipv6(ip)) => Ok(Some(IpAddr::V6(ip))),
    }
}

/// Whether Keel must never call `ip`: anything not globally reachable
/// (loopback, private, shared, link-local and metadata, unique local,
/// multicast, broadcast, reserved, documentation and benchmarking ranges),
/// and the IPv6 forms that embed such an IPv4 address.
pub fn is_forbidden(ip: IpAddr) -> bool {
    forbidden_class(ip).is_some()
}

/// What kind of forbidden address `ip` is ("a loopback address"), or
/// `None` for a public one.
pub fn forbidden_class(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(ip) => v4_class(ip),
        IpAddr::V6(ip) => v6_class(ip),
    }
}

/// An IPv4 prefix: the network and its length.
type V4Net = (Ipv4Addr, u8, &'static str);

/// The IANA special-purpose IPv4 ranges that are not globally reachable,
/// most specific first (so 169.254.169.254 is named as metadata).
const V4_FORBIDDEN: &[V4Net] = &[
    (Ipv4Addr::new(0, 0, 0, 0), 32, "the unspecified address"),
    (Ipv4Addr::new(255, 255, 255, 255), 32, "the broadcast address"),
    (Ipv4Addr::new(169, 254, 169, 254), 32, "the cloud metadata address"),
    (Ipv4Addr::new(0, 0, 0, 0), 8, "a \"this network\" address"),
    (Ipv4Addr::new(10, 0, 0, 0), 8, "a private address"),
    (Ipv4Addr::new(100, 64, 0, 0), 10, "a shared (carrier-grade NAT) address"),
    (Ipv4Addr::new(127, 0, 0, 0), 8, "a loopback address"),
    (Ipv4Addr::new(169, 254, 0, 0), 16, "a link-local address"),
    (Ipv4Addr::new(172, 16, 0, 0), 12, "a private address"),
    (Ipv4Addr::new(192, 0, 0, 0), 24, "an IETF protocol assignment address"),
    (Ipv4Addr::new(192, 0, 2, 0), 24, "a documentation address"),
    (Ipv4Addr::new(192, 88, 99, 0), 24, "a 6to4 relay anycast address"),
    (Ipv4Addr::new(192, 168, 0, 0), 16, "a private address"),
    (Ipv4Addr::new(198, 18, 0, 0), 15, "a benchmarking address"),
    (Ipv4Addr::new(198, 51, 100, 0), 24, "a documentation address"),
    (Ipv4Addr::new(203, 0, 113, 0), 24, "a documentation address"),
    (Ipv4Addr::new(224, 0, 0, 0), 4, "a multicast address"),
    (Ipv4Addr::new(240, 0, 0, 0), 4, "a reserved address"),
];

fn v4_class(ip: Ipv4Addr) -> Option<&'static str> {
    let bits = u32::from(ip);
    V4_FORBIDDEN.iter().find_map(|&(net, len, class)| {
        let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
        (bits & mask == u32::from(net) & mask).then_some(class)
    })
}

/// An IPv6 prefix: the network, its length and what it is.
type V6Net = (Ipv6Addr, u8, &'static str);

/// The IPv6 ranges refused outright. The ones that embed an IPv4 address
/// (mapped, compatible, NAT64, 6to4) are judged by that address instead.
const V6_FORBIDDEN: &[V6Net] = &[
    (Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 0), 128, "the unspecified address"),
    (Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 1), 128, "a loopback address"),
    (
        Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254),
        128,
        "the cloud metadata address",
    ),
    (
        Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0),
        48,
        "a local-use NAT64 address",
    ),
    (Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0), 64, "a discard-only address"),
    (Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 32, "a Teredo address"),
    (Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 0), 48, "a benchmarking address"),
    (
        Ipv6Addr::new(0x2001, 0x10, 0, 0, 0, 0, 0, 0),
        28,
        "a deprecated ORCHID address",
    ),
    (
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0),
        32,
        "a documentation address",
    ),
    (
        Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0),
        20,
        "a documentation address",
    ),
    (
        Ipv6Addr::new(0x5f00, 0, 0, 0, 0, 0, 0, 0),
        16,
        "a segment routing address",
    ),
    (Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7, "a unique local address"),
    (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10, "a link-local address"),
    (Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0), 10, "a site-local address"),
    (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8, "a multicast address"),
];

fn v6_class(ip: Ipv6Addr) -> Option<&'static str> {
    let bits = u128::from(ip);
    let in_net = |net: Ipv6Addr, len: u8| {
        let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
        bits & mask == u128::from(net) & mask
    };
    if let Some(class) = V6_FORBIDDEN
        .iter()
        .find_map(|&(net, len, class)| in_net(net, len).then_some(class))
    {
        return Some(class);
    }
    // The low 32 bits are an IPv4 address in IPv4-mapped (::ffff:0:0/96),
    // IPv4-compatible (::/96) and NAT64 (64:ff9b::/96) addresses: the
    // connection ends up at that IPv4 address, so it is what is judged.
    let low_v4 = Ipv4Addr::from((bits & 0xffff_ffff) as u32);
    let mapped = in_net(Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96);
    let compatible = in_net(Ipv6Addr::UNSPECIFIED, 96);
    let nat64 = in_net(Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96);
    if mapped || compatible || nat64 {
        return v4_class(low_v4).or(compatible.then_some("a deprecated IPv4-compatible address"));
    }
    // 6to4 (2002::/16) carries its IPv4 address in bits 16 to 48.
    if in_net(Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0), 16) {
        return v4_class(Ipv4Addr::from(((bits >> 80) & 0xffff_ffff) as u32));
    }
    None
}

/// A DNS resolver for the sender's HTTP client that resolves through the
/// guard: the client connects only to the addresses handed back here, so a
/// name that resolved to a public address at the check and to a private one
/// at the connection is refused at the connection. (IP literals never reach
/// a resolver; [`Guard::check_url`] judges those.)
#[derive(Debug, Clone, Copy)]
pub struct GuardedResolver {
    guard: Guard,
}

impl GuardedResolver {
    /// A resolver that refuses what `guard` refuses.
    pub fn new(guard: Guard) -> Self {
        Self { guard }
    }
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let guard = self.guard;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            // Port 0: the client puts in the URL's port.
            let addrs = guard.resolve_name(&host, 0).await?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STRICT: Guard = Guard { allow_private: false };
    const LAX: Guard = Guard { allow_private: true };

    #[test]
    fn forbidden_addresses() {
        let cases: &[(&str, &str)] = &[
            ("127.0.0.1", "a loopback address"),
            ("127.255.255.254", "a loopback address"),
            ("0.0.0.0", "the unspecified address"),
            ("0.1.2.3", "a \"this network\" address"),
            ("10.0.0.1", "a private address"),
            ("10.255.255.255", "a private address"),
            ("172.16.0.1", "a private address"),
            ("172.31.255.255", "a private address"),
            ("192.168.1.1", "a private address"),
            ("100.64.0.1", "a shared (carrier-grade NAT) address"),
            ("100.127.255.255", "a shared (carrier-grade NAT) address"),
            ("169.254.169.254", "the cloud metadata address"),
            ("169.254.1.1", "a link-local address"),
            ("192.0.0.8", "an IETF protocol assignment address"),
            ("192.0.2.1", "a documentation address"),
            ("198.51.100.7", "a documentation address"),
            ("203.0.113.9", "a documentation address"),
            ("198.18.0.1", "a benchmarking address"),
            ("198.19.255.255", "a benchmarking address"),
            ("192.88.99.1", "a 6to4 relay anycast address"),
            ("224.0.0.1", "a multicast address"),
            ("239.255.255.250", "a multicast address"),
            ("240.0.0.1", "a reserved address"),
            ("255.255.255.255", "the broadcast address"),
            ("::", "the unspecified address"),
            ("::1", "a loopback address"),
            ("fe80::1", "a link-local address"),
            ("febf::1", "a link-local address"),
            ("fc00::1", "a unique local address"),
            ("fd12:3456::1", "a unique local address"),
            ("fd00:ec2::254", "the cloud metadata address"),
            ("fec0::1", "a site-local address"),
            ("ff02::1", "a multicast address"),
            ("2001:db8::1", "a documentation address"),
            ("3fff::1", "a documentation address"),
            ("2001::1", "a Teredo address"),
            ("2001:2::1", "a benchmarking address"),
            ("100::1", "a discard-only address"),
            ("64:ff9b:1::a00:1", "a local-use NAT64 address"),
            // IPv4-mapped, IPv4-compatible, NAT64 and 6to4 forms.
            ("::ffff:127.0.0.1", "a loopback address"),
            ("::ffff:169.254.169.254", "the cloud metadata address"),
            ("::ffff:10.1.2.3", "a private address"),
            ("::ffff:0.0.0.0", "the unspecified address"),
            ("::127.0.0.1", "a loopback address"),
            ("::192.168.0.1", "a private address"),
            ("::8.8.8.8", "a deprecated IPv4-compatible address"),
            ("64:ff9b::127.0.0.1", "a loopback address"),
            ("64:ff9b::a9fe:a9fe", "the cloud metadata address"),
            ("2002:7f00:1::1", "a loopback address"),
            ("2002:c0a8:101::1", "a private address"),
        ];
        for &(ip, class) in cases {
            let addr: IpAddr = ip.parse().unwrap_or_else(|_| panic!("{ip} parses"));
            assert_eq!(forbidden_class(addr), Some(class), "{ip}");
            assert!(is_forbidden(addr), "{ip}");
        }
    }

    #[test]
    fn public_addresses() {
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.215.14",
            "172.15.255.255",
            "172.32.0.1",
            "100.63.255.255",
            "100.128.0.1",
            "192.0.1.1",
            "198.17.255.255",
            "198.20.0.1",
            "169.253.255.255",
            "223.255.255.255",
            "2606:4700:4700::1111",
            "2a00:1450:4001:81c::200e",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            let addr: IpAddr = ip.parse().unwrap_or_else(|_| panic!("{ip} parses"));
            assert_eq!(forbidden_class(addr), None, "{ip}");
        }
    }

    /// What a refusal is expected to be.
    type Expected = fn(&Refusal) -> bool;

    #[test]
    fn url_rules() {
        let refused: &[(&str, Guard, Expected)] = &[
            ("/relative/path", STRICT, |r| matches!(r, Refusal::Invalid { .. })),
            ("not a url", STRICT, |r| matches!(r, Refusal::Invalid { .. })),
            ("http://example.com/hook", STRICT, |r| {
                matches!(
                    r,
                    Refusal::Scheme {
                        http_allowed: false,
                        ..
                    }
                )
            }),
            ("ftp://example.com/hook", LAX, |r| {
                matches!(r, Refusal::Scheme { http_allowed: true, .. })
            }),
            ("file:///etc/passwd", LAX, |r| matches!(r, Refusal::Scheme { .. })),
            ("https://user:pass@example.com/", STRICT, |r| *r == Refusal::UserInfo),
            ("https://user@example.com/", STRICT, |r| *r == Refusal::UserInfo),
            ("https://127.0.0.1/", STRICT, |r| matches!(r, Refusal::Forbidden { .. })),
            ("https://[::1]:8443/", STRICT, |r| {
                matches!(r, Refusal::Forbidden { .. })
            }),
            ("https://[::ffff:169.254.169.254]/", STRICT, |r| {
                matches!(r, Refusal::Forbidden { .. })
            }),
            // Spellings of 127.0.0.1 the URL parser normalises.
            ("https://2130706433/", STRICT, |r| {
                matches!(r, Refusal::Forbidden { .. })
            }),
            ("https://0x7f.1/", STRICT, |r| matches!(r, Refusal::Forbidden { .. })),
            ("https://0177.0.0.1/", STRICT, |r| {
                matches!(r, Refusal::Forbidden { .. })
            }),
        ];
        for (raw, guard, expected) in refused {
            let refusal = guard.check_url(raw).expect_err(raw);
            assert!(expected(&refusal), "{raw}: {refusal:?}");
        }

        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN));
        assert!(matches!(STRICT.check_url(&long), Err(Refusal::TooLong { .. })));
        let longest = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN - 20));
        assert_eq!(longest.len(), MAX_URL_LEN);
        assert!(STRICT.check_url(&longest).is_ok());

        for (raw, guard) in [
            ("https://example.com/hooks?x=1", STRICT),
            ("https://8.8.8.8:8443/", STRICT),
            ("http://127.0.0.1:8080/hook", LAX),
            ("https://[::1]/", LAX),
        ] {
            assert!(guard.check_url(raw).is_ok(), "{raw}");
        }
    }

    #[test]
    fn refusals_explain_themselves() -> Result<(), Refusal> {
        let refusal = Refusal::Forbidden {
            host: "hooks.example".into(),
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            class: "a loopback address",
        };
        assert_eq!(
            refusal.to_string(),
            "hooks.example resolves to 127.0.0.1, a loopback address; endpoints must be public"
        );
        let literal = STRICT
            .check_url("https://169.254.169.254/latest/meta-data")
            .expect_err("metadata");
        assert_eq!(
            literal.to_string(),
            "169.254.169.254 is the cloud metadata address; endpoints must be public"
        );
        let scheme = STRICT.check_url("http://example.com").expect_err("http");
        assert_eq!(
            scheme.to_string(),
            "the scheme is \"http\"; endpoints must be https:// URLs"
        );
        Ok(())
    }

    #[tokio::test]
    async fn resolution_refuses_any_forbidden_address() -> anyhow::Result<()> {
        let url = LAX.check_url("http://localhost:8080/hook")?;
        let refusal = STRICT.resolve(&url).await.expect_err("localhost is loopback");
        assert!(matches!(refusal, Refusal::Forbidden { .. }), "{refusal:?}");
        assert!(refusal.to_string().starts_with("localhost resolves to "), "{refusal}");

        let addrs = LAX.resolve(&url).await?;
        assert!(!addrs.is_empty());
        assert!(
            addrs.iter().all(|a| a.port() == 8080 && a.ip().is_loopback()),
            "{addrs:?}"
        );

        let literal = STRICT.check_url("https://8.8.8.8/")?;
        assert_eq!(
            STRICT.resolve(&literal).await?,
            vec![SocketAddr::from(([8, 8, 8, 8], 443))]
        );

        // `.invalid` never resolves (RFC 6761).
        let nowhere = STRICT.check_url("https://nowhere.invalid/")?;
        let refusal = STRICT.resolve(&nowhere).await.expect_err("unresolvable");
        assert!(matches!(refusal, Refusal::Unresolved { .. }), "{refusal:?}");
        Ok(())
    }
}
