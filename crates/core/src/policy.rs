//! Pull policy and the "ignore the resource version" rule (REFERENCE §3).

use std::fmt;
use std::str::FromStr;

use crate::{Error, ModuleUrl, Scheme};

/// When to pull a module whose URL is not pinned to a checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum PullPolicy {
    /// No policy given (0): OCI behaves as `IfNotPresent` unless the tag is
    /// `:latest`; http(s) keeps the reference's "always" semantics.
    #[default]
    Unspecified,
    /// Pull only if no module is cached for the URL (1).
    IfNotPresent,
    /// Pull whenever the resource version changes (2).
    Always,
}

impl PullPolicy {
    /// The reference's rule (`pullIfNotPresent` in the seed): whether the cached
    /// checksum of `url` may be used whatever the request's resource version.
    ///
    /// | scheme | Unspecified | IfNotPresent | Always |
    /// |---|---|---|---|
    /// | oci | yes, unless the URL names `:latest` | yes | no |
    /// | http/https, and any other scheme | no | yes (newer Istio) | no |
    pub fn ignores_resource_version(self, url: &ModuleUrl) -> bool {
        match self {
            Self::Always => false,
            Self::IfNotPresent => true,
            Self::Unspecified => url.has_scheme(&Scheme::Oci) && !url.is_latest(),
        }
    }

    /// Whether the checksum a URL's record remembers answers a request for
    /// `url` without a download: the record has seen the request's resource
    /// version (`seen_version`), or this policy ignores resource versions
    /// for the URL ([`ignores_resource_version`](Self::ignores_resource_version)).
    /// The one rule of [`Index::lookup`](crate::Index::lookup) and of any
    /// quicker path that answers from the same records.
    pub fn takes_record(self, url: &ModuleUrl, seen_version: bool) -> bool {
        seen_version || self.ignores_resource_version(url)
    }

    /// The name used on the command line and in config (`if-not-present`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unspecified => "unspecified",
            Self::IfNotPresent => "if-not-present",
            Self::Always => "always",
        }
    }
}

impl fmt::Display for PullPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PullPolicy {
    type Err = Error;
    /// Accepts `unspecified`, `if-not-present`, `always`, the Kubernetes /
    /// Istio spellings `IfNotPresent`, `Always`, and the numbers 0, 1, 2.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().replace(['-', '_'], "").as_str() {
            "" | "unspecified" | "0" => Ok(Self::Unspecified),
            "ifnotpresent" | "1" => Ok(Self::IfNotPresent),
            "always" | "2" => Ok(Self::Always),
            _ => Err(Error::InvalidConfig {
                reason: format!(
                    "unknown pull policy {s:?}: expected unspecified, if-not-present or always"
                ),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_of_the_reference() {
        let oci = ModuleUrl::parse("oci://ghcr.io/a/b:v1").unwrap();
        let latest = ModuleUrl::parse("oci://ghcr.io/a/b:latest").unwrap();
        let http = ModuleUrl::parse("https://h.example/a.wasm").unwrap();
        use PullPolicy::*;
        assert!(Unspecified.ignores_resource_version(&oci));
        assert!(!Unspecified.ignores_resource_version(&latest));
        assert!(IfNotPresent.ignores_resource_version(&latest));
        assert!(!Always.ignores_resource_version(&oci));
        assert!(!Unspecified.ignores_resource_version(&http));
        assert!(IfNotPresent.ignores_resource_version(&http));
        assert!(!Always.ignores_resource_version(&http));
        // A record that saw the resource version answers under every policy;
        // one that did not, only where the version is ignored.
        for p in [Unspecified, IfNotPresent, Always] {
            for u in [&oci, &latest, &http] {
                assert!(p.takes_record(u, true));
                assert_eq!(p.takes_record(u, false), p.ignores_resource_version(u));
            }
        }
    }

    #[test]
    fn parses_all_spellings() {
        for (s, p) in [
            ("IfNotPresent", PullPolicy::IfNotPresent),
            ("if-not-present", PullPolicy::IfNotPresent),
            ("Always", PullPolicy::Always),
            ("0", PullPolicy::Unspecified),
        ] {
            assert_eq!(s.parse::<PullPolicy>().unwrap(), p);
            assert_eq!(p.as_str().parse::<PullPolicy>().unwrap(), p);
        }
        let e = "sometimes".parse::<PullPolicy>().unwrap_err().to_string();
        assert!(e.contains("unknown pull policy \"sometimes\""), "{e}");
    }
}
