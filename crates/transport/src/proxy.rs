//! `HTTP_PROXY` / `HTTPS_PROXY` / `NO_PROXY`: which proxy, if any, a request
//! goes through.
//!
//! - `https_proxy` (or `HTTPS_PROXY`) is used for `https://` targets, through a
//!   `CONNECT` tunnel; TLS to the target runs inside the tunnel, verified as
//!   usual, so the proxy sees only the target's name and port.
//! - `http_proxy` (or `HTTP_PROXY`) is used for `http://` targets: the request
//!   goes to the proxy in absolute form (`GET http://host/path`).
//! - The lower-case name wins over the upper-case one. A proxy URL is
//!   `http://[user:password@]host[:port]` (port 80 by default; a bare
//!   `host:port` is read as `http://host:port`); its credentials are sent as
//!   `Proxy-Authorization: Basic` to the proxy only.
//! - `no_proxy` (or `NO_PROXY`): comma-separated entries; `*` bypasses the
//!   proxy for everything; a name (`example.com` or `.example.com`) matches
//!   itself and every subdomain; an IP address or CIDR matches literal
//!   addresses in it; an entry with `:port` matches that port only.

use std::net::IpAddr;

use ipnet::IpNet;
use url::Url;

use crate::guard::parse_cidr;

/// A proxy server: where to connect and what to tell it.
#[derive(Clone, PartialEq, Eq)]
pub struct Proxy {
    /// The proxy's host (a name or an IP literal, without brackets).
    pub host: String,
    /// The proxy's port.
    pub port: u16,
    /// `Proxy-Authorization` value, if the URL had credentials.
    pub(crate) authorization: Option<String>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("host", &self.host)
            .field("port", &self.port)
            .field(
                "authorization",
                &self.authorization.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl Proxy {
    /// Parses a proxy URL (`http://[user:pass@]host[:port]`, or `host:port`).
    ///
    /// # Errors
    /// A reason (never quoting credentials) for another scheme, no host, or
    /// something that is not a URL.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let with_scheme = if s.contains("://") {
            s.to_owned()
        } else {
            format!("http://{s}")
        };
        let url = Url::parse(&with_scheme)
            .map_err(|e| format!("proxy {} is not a URL: {e}", wasm_cache_core::redact_url(s)))?;
        if url.scheme() != "http" {
            return Err(format!(
                "proxy scheme {} is not supported (only http:// proxies)",
                url.scheme()
            ));
        }
        let host = match url.host() {
            Some(url::Host::Domain(d)) if !d.is_empty() => d.to_owned(),
            Some(url::Host::Ipv4(v4)) => v4.to_string(),
            Some(url::Host::Ipv6(v6)) => v6.to_string(),
            _ => return Err("proxy URL has no host".to_owned()),
        };
        let authorization = (!url.username().is_empty() || url.password().is_some()).then(|| {
            use base64::Engine as _;
            let user = percent_decode(url.username());
            let pass = percent_decode(url.password().unwrap_or(""));
            let raw = [user.as_slice(), b":", pass.as_slice()].concat();
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(raw)
            )
        });
        Ok(Self {
            host,
            port: url.port().unwrap_or(80),
            authorization,
        })
    }

    /// `host:port` as a `CONNECT` target or `Host` header names it.
    pub fn authority(&self) -> String {
        authority(&self.host, self.port)
    }
}

pub(crate) fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

pub(crate) fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| char::from(c).to_digit(16);
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum NoProxyEntry {
    All,
    Name { suffix: String, port: Option<u16> },
    Net { net: IpNet, port: Option<u16> },
}

/// The proxy configuration: one proxy per target scheme, and the bypass list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyConfig {
    /// For `http://` targets.
    pub http: Option<Proxy>,
    /// For `https://` targets.
    pub https: Option<Proxy>,
    no_proxy: Vec<NoProxyEntry>,
}

impl ProxyConfig {
    /// No proxy at all.
    pub fn none() -> Self {
        Self::default()
    }

    /// From the process environment (`http_proxy`, `HTTP_PROXY`, ...).
    ///
    /// # Errors
    /// A proxy variable that does not hold a usable proxy URL.
    pub fn from_env() -> Result<Self, String> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// From variables looked up by `get` (for tests: no process environment).
    ///
    /// # Errors
    /// A proxy variable that does not hold a usable proxy URL.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let var = |lower: &str, upper: &str| {
            get(lower)
                .or_else(|| get(upper))
                .filter(|v| !v.trim().is_empty())
        };
        let parse = |name: &str, v: Option<String>| {
            v.map(|v| Proxy::parse(&v).map_err(|e| format!("{name}: {e}")))
                .transpose()
        };
        Ok(Self {
            http: parse("HTTP_PROXY", var("http_proxy", "HTTP_PROXY"))?,
            https: parse("HTTPS_PROXY", var("https_proxy", "HTTPS_PROXY"))?,
            no_proxy: var("no_proxy", "NO_PROXY")
                .map(|v| parse_no_proxy(&v))
                .unwrap_or_default(),
        })
    }

    /// Sets the proxy for `https://` targets.
    #[must_use]
    pub fn with_https(mut self, proxy: Option<Proxy>) -> Self {
        self.https = proxy;
        self
    }

    /// Sets the proxy for `http://` targets.
    #[must_use]
    pub fn with_http(mut self, proxy: Option<Proxy>) -> Self {
        self.http = proxy;
        self
    }

    /// Sets the bypass list (`NO_PROXY` syntax).
    #[must_use]
    pub fn with_no_proxy(mut self, list: &str) -> Self {
        self.no_proxy = parse_no_proxy(list);
        self
    }

    /// Whether any proxy is configured.
    pub fn is_empty(&self) -> bool {
        self.http.is_none() && self.https.is_none()
    }

    /// The proxy for a request to `scheme://host:port`, if one applies.
    pub fn for_target(&self, scheme: &str, host: &str, port: u16) -> Option<&Proxy> {
        let proxy = match scheme {
            "https" => self.https.as_ref(),
            "http" => self.http.as_ref(),
            _ => None,
        }?;
        (!self.bypassed(host, port)).then_some(proxy)
    }

    fn bypassed(&self, host: &str, port: u16) -> bool {
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .trim_end_matches('.')
            .to_ascii_lowercase();
        let ip = host.parse::<IpAddr>().ok();
        self.no_proxy.iter().any(|e| match e {
            NoProxyEntry::All => true,
            NoProxyEntry::Name { suffix, port: p } => {
                p.is_none_or(|p| p == port)
                    && (host == *suffix
                        || (host.len() > suffix.len()
                            && host.ends_with(suffix.as_str())
                            && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'))
            }
            NoProxyEntry::Net { net, port: p } => {
                p.is_none_or(|p| p == port) && ip.is_some_and(|ip| net.contains(&ip))
            }
        })
    }
}

fn parse_no_proxy(list: &str) -> Vec<NoProxyEntry> {
    list.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|e| {
            if e == "*" {
                return NoProxyEntry::All;
            }
            if let Some(net) = parse_cidr(e.trim_start_matches('[').trim_end_matches(']')) {
                return NoProxyEntry::Net { net, port: None };
            }
            // `host:port`, `[v6]:port`, `1.2.3.4:port`
            let (host, port) = match e.rsplit_once(':') {
                Some((h, p)) if !h.contains(':') || h.ends_with(']') => match p.parse::<u16>() {
                    Ok(port) => (h, Some(port)),
                    Err(_) => (e, None),
                },
                _ => (e, None),
            };
            let host = host.trim_start_matches('[').trim_end_matches(']');
            if let Some(net) = parse_cidr(host) {
                return NoProxyEntry::Net { net, port };
            }
            NoProxyEntry::Name {
                suffix: host
                    .trim_start_matches("*.")
                    .trim_start_matches('.')
                    .trim_end_matches('.')
                    .to_ascii_lowercase(),
                port,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(vars: &[(&str, &str)]) -> ProxyConfig {
        ProxyConfig::from_lookup(|n| {
            vars.iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| (*v).to_owned())
        })
        .unwrap()
    }

    #[test]
    fn variables_pick_proxies() {
        let c = cfg(&[
            ("HTTPS_PROXY", "http://u:p%40ss@proxy.example:3128"),
            ("http_proxy", "proxy2.example:8080"),
            ("HTTP_PROXY", "ignored.example:1"),
        ]);
        let p = c.for_target("https", "registry.example", 443).unwrap();
        assert_eq!((p.host.as_str(), p.port), ("proxy.example", 3128));
        // base64("u:p@ss")
        assert_eq!(p.authorization.as_deref(), Some("Basic dTpwQHNz"));
        assert!(!format!("{p:?}").contains("dTpwQHNz"));
        let p = c.for_target("http", "a.example", 80).unwrap();
        assert_eq!(p.authority(), "proxy2.example:8080");
        assert!(cfg(&[]).for_target("https", "a", 443).is_none());
        assert!(ProxyConfig::from_lookup(|_| Some("socks5://x:1".into())).is_err());
        let e = ProxyConfig::from_lookup(|n| {
            (n == "https_proxy").then(|| "https://u:hunter2@x".into())
        })
        .unwrap_err();
        assert!(e.contains("only http://") && !e.contains("hunter2"), "{e}");
    }

    #[test]
    fn no_proxy_matches() {
        let c = cfg(&[
            ("https_proxy", "http://proxy:3128"),
            (
                "NO_PROXY",
                "example.com, .internal.test,10.0.0.0/8, 192.0.2.7, localhost:5000, [::1]",
            ),
        ]);
        for (host, port) in [
            ("example.com", 443),
            ("a.example.com", 443),
            ("EXAMPLE.COM.", 443),
            ("x.internal.test", 443),
            ("internal.test", 443),
            ("10.1.2.3", 443),
            ("192.0.2.7", 443),
            ("localhost", 5000),
            ("[::1]", 443),
        ] {
            assert!(c.for_target("https", host, port).is_none(), "{host}:{port}");
        }
        for (host, port) in [
            ("notexample.com", 443),
            ("example.org", 443),
            ("11.0.0.1", 443),
            ("localhost", 5001),
            ("192.0.2.8", 443),
        ] {
            assert!(c.for_target("https", host, port).is_some(), "{host}:{port}");
        }
        let all = cfg(&[("https_proxy", "proxy:1"), ("no_proxy", "*")]);
        assert!(all.for_target("https", "a.example", 443).is_none());
    }
}
