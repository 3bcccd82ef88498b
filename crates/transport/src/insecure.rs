//! The insecure-host list: one meaning for HTTP(S) URLs and OCI registries.

/// Hosts whose TLS certificates are not verified (and, for OCI registries,
/// that may be reached over plain HTTP).
///
/// Each entry is one of:
/// - `*`: every host;
/// - `host:port` (`[v6]:port` for IPv6): that host on that port only; the
///   port is the one the URL implies (`443` for `https://host/`, the
///   registry's port, else 443, for `oci://host/...`);
/// - `host` (or a bare IPv6 address): that host on any port.
///
/// Matching ignores ASCII case. Entries are not URLs: `http://host` or
/// `host/path` are configuration errors.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InsecureHosts {
    entries: Vec<Entry>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    All,
    Host(String),
    HostPort(String, u16),
}

impl InsecureHosts {
    /// Parses the entries.
    ///
    /// # Errors
    /// A reason naming the first entry that is empty, a URL, has a path or
    /// whitespace, or a port that is not a number.
    pub fn parse<I, S>(entries: I) -> Result<Self, String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut out = Vec::new();
        for raw in entries {
            let e = raw.as_ref().trim();
            let bad = || format!("insecure host {e:?} must be host, host:port or *");
            if e.is_empty()
                || e.contains("://")
                || e.contains('/')
                || e.contains(char::is_whitespace)
            {
                return Err(if e.is_empty() {
                    "an insecure host entry is empty".to_owned()
                } else {
                    bad()
                });
            }
            if e == "*" {
                out.push(Entry::All);
                continue;
            }
            let e = e.to_ascii_lowercase();
            if let Some(rest) = e.strip_prefix('[') {
                // `[v6]` or `[v6]:port`
                let (host, after) = rest.split_once(']').ok_or_else(bad)?;
                match after.strip_prefix(':') {
                    Some(p) => out.push(Entry::HostPort(
                        host.to_owned(),
                        p.parse().map_err(|_| bad())?,
                    )),
                    None if after.is_empty() => out.push(Entry::Host(host.to_owned())),
                    None => return Err(bad()),
                }
                continue;
            }
            match e.matches(':').count() {
                0 => out.push(Entry::Host(e)),
                1 => {
                    let (h, p) = e.split_once(':').ok_or_else(bad)?;
                    if h.is_empty() {
                        return Err(bad());
                    }
                    out.push(Entry::HostPort(h.to_owned(), p.parse().map_err(|_| bad())?));
                }
                // A bare IPv6 address.
                _ => out.push(Entry::Host(e)),
            }
        }
        Ok(Self { entries: out })
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether `host` (a name or an IP literal, brackets optional) on `port`
    /// is listed.
    pub fn matches(&self, host: &str, port: u16) -> bool {
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        self.entries.iter().any(|e| match e {
            Entry::All => true,
            Entry::Host(h) => *h == host,
            Entry::HostPort(h, p) => *h == host && *p == port,
        })
    }

    /// Whether an OCI registry (`host[:port]` as written in a reference) is
    /// listed; a registry without a port is on 443.
    pub fn matches_registry(&self, registry: &str) -> bool {
        let (host, port) = split_registry(registry);
        self.matches(host, port)
    }
}

/// `host[:port]` of a registry reference as (host, port), 443 by default.
pub fn split_registry(registry: &str) -> (&str, u16) {
    if let Some(rest) = registry.strip_prefix('[')
        && let Some((h, after)) = rest.split_once(']')
    {
        let port = after
            .strip_prefix(':')
            .and_then(|p| p.parse().ok())
            .unwrap_or(443);
        return (h, port);
    }
    match registry.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, p.parse().unwrap_or(443)),
        _ => (registry, 443),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_meaning() {
        let l = InsecureHosts::parse(["a.example:8443", "B.example", "[::1]:5000", "10.0.0.1"])
            .unwrap();
        assert!(l.matches("a.example", 8443));
        assert!(!l.matches("a.example", 443));
        assert!(l.matches("b.example", 1));
        assert!(l.matches("b.example", 443));
        assert!(l.matches("[::1]", 5000) && l.matches("::1", 5000));
        assert!(!l.matches("::1", 5001));
        assert!(l.matches("10.0.0.1", 9));
        assert!(l.matches_registry("b.example:5000"));
        assert!(l.matches_registry("a.example:8443"));
        assert!(!l.matches_registry("a.example"));
        assert!(InsecureHosts::parse(["*"]).unwrap().matches("x", 1));
        assert!(!InsecureHosts::default().matches("x", 1));
        for bad in ["", "http://h:5000/", "h/p", "h:port", "a b", ":5000"] {
            assert!(InsecureHosts::parse([bad]).is_err(), "{bad:?}");
        }
        assert_eq!(split_registry("r.io"), ("r.io", 443));
        assert_eq!(split_registry("127.0.0.1:5000"), ("127.0.0.1", 5000));
        assert_eq!(split_registry("[::1]:5000"), ("::1", 5000));
    }
}
