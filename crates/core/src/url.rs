//! The module URL model: `http`, `https` and `oci://` references, and opaque
//! URLs of any other scheme, for fetchers other projects plug in.
//!
//! Rules for a scheme other than http, https and oci (`file://`, `s3://`,
//! `gs://`, ...): the URL must parse as a URL (RFC 3986, via the `url` crate);
//! it is routed by its [`Scheme`] to the fetcher registered for it (a cache
//! without one answers `unsupported Wasm module downloading URL scheme`); the
//! module name is the whole URL, its checksum is the sha256 of the module
//! bytes, and pull policies apply as for http(s) (REFERENCE §3: `Unspecified`
//! and `Always` pull again on a new resource version, `IfNotPresent` does not).

use std::fmt;
use std::sync::Arc;

use crate::{Error, Sha256Digest};

/// The URL prefix of OCI references.
pub const OCI_PREFIX: &str = "oci://";
/// Docker Hub's canonical registry name (as go-containerregistry normalises it).
pub const DOCKER_HUB_REGISTRY: &str = "index.docker.io";
const DEFAULT_TAG: &str = "latest";

/// The scheme of a module URL: the three the project fetches itself, or any
/// other (lower-case) scheme a plugged-in fetcher serves.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Scheme {
    /// `http://`
    Http,
    /// `https://`
    Https,
    /// `oci://`
    Oci,
    /// Any other scheme, lower-case (`file`, `s3`, ...); make one with
    /// [`Scheme::new`], which maps the three above to their own variants.
    Other(Arc<str>),
}

impl Scheme {
    /// The scheme named `name` (case-insensitive): [`Scheme::Http`],
    /// [`Scheme::Https`], [`Scheme::Oci`] or [`Scheme::Other`].
    ///
    /// # Errors
    /// [`Error::InvalidUrl`] when `name` is not a URL scheme (RFC 3986: a
    /// letter, then letters, digits, `+`, `-` or `.`).
    pub fn new(name: &str) -> Result<Self, Error> {
        if !is_scheme(name) {
            return Err(Error::InvalidUrl {
                url: crate::shorten(name, 64),
                reason: "malformed scheme".to_owned(),
            });
        }
        Ok(match name.to_ascii_lowercase().as_str() {
            "http" => Self::Http,
            "https" => Self::Https,
            "oci" => Self::Oci,
            other => Self::Other(other.into()),
        })
    }

    /// The scheme as written in a URL, lower-case.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Http => "http",
            Self::Https => "https",
            Self::Oci => "oci",
            Self::Other(s) => s,
        }
    }

    /// Whether this is `http` or `https`.
    pub fn is_http(&self) -> bool {
        matches!(self, Self::Http | Self::Https)
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed, validated module URL.
///
/// Rules for a scheme other than http, https and oci (`file://`, `s3://`,
/// `gs://`, ...): the URL must parse as a URL (RFC 3986, via the `url` crate);
/// it is routed by its [`Scheme`] to the fetcher registered for it (a cache
/// without one answers `unsupported Wasm module downloading URL scheme`); the
/// module name is the whole URL, its checksum is the sha256 of the module
/// bytes, and pull policies apply as for http(s) (REFERENCE §3: `Unspecified`
/// and `Always` pull again on a new resource version, `IfNotPresent` does not).
///
/// `Display` and `Debug` print the [redacted](redact_url) form: user-info and
/// query strings (which may carry tokens) never reach logs or errors. Use
/// [`ModuleUrl::as_str`] for the URL as given, e.g. to make a request.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ModuleUrl {
    raw: String,
    kind: Kind,
}

#[derive(Clone, PartialEq, Eq, Hash)]
enum Kind {
    Http(url::Url),
    Oci(OciReference),
    /// Any other scheme; the scheme is kept, lower-case, for routing.
    Opaque(Scheme, url::Url),
}

/// An OCI reference, `registry[:port]/repository[:tag|@algorithm:hex]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OciReference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<String>,
}

impl ModuleUrl {
    /// Parses and validates a module URL.
    ///
    /// A URL of a scheme other than http, https and oci parses as an opaque
    /// URL (rules in [`ModuleUrl`]'s docs); whether anything can fetch it is
    /// decided by the fetcher registered for its [`Scheme`].
    ///
    /// # Errors
    /// [`Error::InvalidUrl`] for anything unparseable.
    pub fn parse(input: &str) -> Result<Self, Error> {
        let invalid = |reason: &str| Error::InvalidUrl {
            url: redact_url(input),
            reason: reason.to_owned(),
        };
        if input.trim() != input || input.is_empty() {
            return Err(invalid("empty or surrounded by white space"));
        }
        let Some((scheme, rest)) = input.split_once("://") else {
            // `url` parses "foo:bar" as scheme "foo": an opaque URL too.
            return match url::Url::parse(input) {
                Ok(u) if !matches!(u.scheme(), "http" | "https" | "oci") => Ok(Self {
                    raw: input.to_owned(),
                    kind: Kind::Opaque(Scheme::new(u.scheme())?, u),
                }),
                Ok(_) => Err(invalid("no authority")),
                Err(_) => Err(invalid("no scheme")),
            };
        };
        match scheme.to_ascii_lowercase().as_str() {
            "oci" => Ok(Self {
                raw: input.to_owned(),
                kind: Kind::Oci(OciReference::parse(rest).map_err(|r| invalid(&r))?),
            }),
            "http" | "https" => {
                let u = url::Url::parse(input).map_err(|e| invalid(&e.to_string()))?;
                if u.host_str().is_none_or(str::is_empty) {
                    return Err(invalid("no host"));
                }
                Ok(Self {
                    raw: input.to_owned(),
                    kind: Kind::Http(u),
                })
            }
            other if is_scheme(other) => {
                let u = url::Url::parse(input).map_err(|e| invalid(&e.to_string()))?;
                Ok(Self {
                    raw: input.to_owned(),
                    kind: Kind::Opaque(Scheme::new(other)?, u),
                })
            }
            _ => Err(invalid("malformed scheme")),
        }
    }

    /// The URL as given (may contain credentials: do not log it).
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// The redacted URL, safe for logs and errors.
    pub fn redacted(&self) -> String {
        redact_url(&self.raw)
    }

    /// The scheme.
    pub fn scheme(&self) -> Scheme {
        match &self.kind {
            Kind::Http(u) if u.scheme() == "https" => Scheme::Https,
            Kind::Http(_) => Scheme::Http,
            Kind::Oci(_) => Scheme::Oci,
            Kind::Opaque(s, _) => s.clone(),
        }
    }

    /// Whether the URL's scheme is `scheme`, without building a [`Scheme`]
    /// (the cache routes every request by it).
    pub fn has_scheme(&self, scheme: &Scheme) -> bool {
        match (&self.kind, scheme) {
            (Kind::Http(u), Scheme::Https) => u.scheme() == "https",
            (Kind::Http(u), Scheme::Http) => u.scheme() == "http",
            (Kind::Oci(_), Scheme::Oci) => true,
            (Kind::Opaque(s, _), other) => s == other,
            _ => false,
        }
    }

    /// The parsed http(s) URL, if this is one.
    pub fn http(&self) -> Option<&url::Url> {
        match &self.kind {
            Kind::Http(u) => Some(u),
            Kind::Oci(_) | Kind::Opaque(..) => None,
        }
    }

    /// The parsed URL of a scheme other than http, https and oci (for a
    /// plugged-in fetcher), if this is one.
    pub fn opaque(&self) -> Option<&url::Url> {
        match &self.kind {
            Kind::Opaque(_, u) => Some(u),
            Kind::Http(_) | Kind::Oci(_) => None,
        }
    }

    /// The OCI reference, if this is an `oci://` URL.
    pub fn oci(&self) -> Option<&OciReference> {
        match &self.kind {
            Kind::Oci(r) => Some(r),
            Kind::Http(_) | Kind::Opaque(..) => None,
        }
    }

    /// The module name, the first half of a module key: for `oci://` the
    /// repository without tag or digest, registry normalised
    /// (`oci://index.docker.io/library/x`); for anything else the whole URL.
    pub fn module_name(&self) -> String {
        match &self.kind {
            Kind::Oci(r) => format!("{OCI_PREFIX}{}/{}", r.registry, r.repository),
            Kind::Http(_) | Kind::Opaque(..) => self.raw.clone(),
        }
    }

    /// Whether the URL explicitly names the `:latest` tag (the reference checks
    /// the URL path's suffix; an omitted tag does not count).
    pub fn is_latest(&self) -> bool {
        matches!(&self.kind, Kind::Oci(r) if r.digest.is_none() && r.tag.as_deref() == Some(DEFAULT_TAG))
    }

    /// Whether the URL names a digest (`@algorithm:hex`), of any algorithm.
    pub fn has_digest(&self) -> bool {
        matches!(&self.kind, Kind::Oci(r) if r.digest.is_some())
    }

    /// The sha256 digest named in an `oci://...@sha256:<hex>` URL.
    pub fn pinned_digest(&self) -> Option<Sha256Digest> {
        self.oci().and_then(OciReference::sha256_digest)
    }

    /// Whether pulls of this URL are remembered in the per-URL checksum records:
    /// http(s) URLs and tagged OCI URLs; OCI URLs pinned with `@` never are.
    pub fn records_checksum(&self) -> bool {
        !self.has_digest()
    }
}

fn is_scheme(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

impl fmt::Display for ModuleUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for ModuleUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ModuleUrl").field(&self.redacted()).finish()
    }
}

impl std::str::FromStr for ModuleUrl {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl OciReference {
    /// Parses `registry[:port]/repository[:tag|@algorithm:hex]` (no `oci://`).
    ///
    /// Docker Hub references are normalised like go-containerregistry does:
    /// no registry, `docker.io` or `registry-1.docker.io` mean `index.docker.io`,
    /// and a one-component repository there gets `library/`.
    ///
    /// # Errors
    /// A reason string when the reference is malformed.
    pub fn parse(input: &str) -> Result<Self, String> {
        let (name, digest) = match input.split_once('@') {
            Some((n, d)) => (n, Some(parse_digest(d)?)),
            None => (input, None),
        };
        // A tag follows the last ':' after the last '/'.
        let last_slash = name.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name[last_slash..].rfind(':') {
            Some(i) => {
                let tag = &name[last_slash + i + 1..];
                if !valid_tag(tag) {
                    return Err(format!("invalid tag {tag:?}"));
                }
                (&name[..last_slash + i], Some(tag.to_owned()))
            }
            None => (name, None),
        };
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_ascii_lowercase(), rest.to_owned())
            }
            _ => (DOCKER_HUB_REGISTRY.to_owned(), name.to_owned()),
        };
        validate_registry(&registry)?;
        let registry = match registry.as_str() {
            "docker.io" | "registry-1.docker.io" => DOCKER_HUB_REGISTRY.to_owned(),
            _ => registry,
        };
        let repository = if registry == DOCKER_HUB_REGISTRY && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        validate_repository(&repository)?;
        Ok(Self {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The registry host, with port when given (`127.0.0.1:5000`).
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository path (`org/filter`).
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag as written, if any.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest as written (`algorithm:hex`), if any.
    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    /// The sha256 digest, when the reference is pinned with `@sha256:<hex>`.
    pub fn sha256_digest(&self) -> Option<Sha256Digest> {
        self.digest
            .as_deref()
            .filter(|d| d.starts_with(crate::digest::SHA256_PREFIX))
            .and_then(|d| Sha256Digest::parse(d).ok())
    }

    /// What to ask the registry for: the digest if pinned, else the tag, else `latest`.
    pub fn reference(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or(DEFAULT_TAG)
    }

    /// The whole reference in `registry/repository[:tag][@digest]` form.
    pub fn whole(&self) -> String {
        let mut s = format!("{}/{}", self.registry, self.repository);
        if let Some(t) = &self.tag {
            s.push(':');
            s.push_str(t);
        }
        if let Some(d) = &self.digest {
            s.push('@');
            s.push_str(d);
        }
        s
    }
}

fn parse_digest(d: &str) -> Result<String, String> {
    let Some((alg, hex)) = d.split_once(':') else {
        return Err(format!("invalid digest {d:?}: expected algorithm:hex"));
    };
    let alg_ok = !alg.is_empty()
        && alg
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+._-".contains(c));
    let hex_ok = hex.len() >= 32 && hex.chars().all(|c| c.is_ascii_hexdigit());
    if !alg_ok || !hex_ok {
        return Err(format!("invalid digest {d:?}"));
    }
    if alg == "sha256" {
        Sha256Digest::parse(hex).map_err(|e| e.to_string())?;
    }
    Ok(d.to_owned())
}

fn valid_tag(tag: &str) -> bool {
    let mut chars = tag.chars();
    tag.len() <= 128
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

fn validate_registry(registry: &str) -> Result<(), String> {
    let (host, port) = match registry.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || registry.starts_with('[') => (h, Some(p)),
        _ => (registry, None),
    };
    let host_ok = !host.is_empty()
        && (host.starts_with('[') && host.ends_with(']')
            || host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-'));
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.parse::<u16>().is_ok());
    if host_ok && port_ok {
        Ok(())
    } else {
        Err(format!("invalid registry {registry:?}"))
    }
}

fn validate_repository(repo: &str) -> Result<(), String> {
    let component_ok = |c: &str| {
        let b = c.as_bytes();
        !b.is_empty()
            && b[0].is_ascii_lowercase() | b[0].is_ascii_digit()
            && b[b.len() - 1].is_ascii_lowercase() | b[b.len() - 1].is_ascii_digit()
            && c.chars()
                .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || "._-".contains(ch))
            && !c.contains("..")
    };
    if repo.len() <= 255 && repo.split('/').all(component_ok) {
        Ok(())
    } else {
        Err(format!(
            "invalid repository {repo:?}: components must be lower-case letters, digits and . _ - separators"
        ))
    }
}

/// Redacts a URL for logs and errors: user-info becomes `***@` and any query
/// string or fragment becomes `?***` (signed URLs carry tokens there).
/// Works on strings that do not parse, too: there the user-info is taken to
/// run up to the *last* `@` (a password may hold an unescaped `/`, `?` or
/// `#`, which is why it did not parse), so nothing before it is shown.
pub fn redact_url(raw: &str) -> String {
    redacted_url(raw).into_owned()
}

/// [`redact_url`] without a copy when there is nothing to hide: a URL with
/// no `@`, `?` or `#` is its own redaction (what `wasm-cache list` prints for
/// each of 100,000 entries).
pub fn redacted_url(raw: &str) -> std::borrow::Cow<'_, str> {
    // A byte scan: `contains` with a char array is a tenth of `list`'s
    // rendering of a large cache.
    if !raw.bytes().any(|b| matches!(b, b'@' | b'?' | b'#')) {
        return std::borrow::Cow::Borrowed(raw);
    }
    std::borrow::Cow::Owned(redact_owned(raw))
}

fn redact_owned(raw: &str) -> String {
    let (scheme, rest) = match raw.split_once("://") {
        Some((s, r)) => (Some(s), r),
        None => (None, raw),
    };
    let authority_end = match rest.rfind('@') {
        // An `@` after the path starts is part of the path, if the URL parses.
        Some(at) if scheme.is_some() && url::Url::parse(raw).is_err() => {
            at + 1
                + rest[at + 1..]
                    .find(['/', '?', '#'])
                    .unwrap_or(rest.len() - at - 1)
        }
        _ => rest.find(['/', '?', '#']).unwrap_or(rest.len()),
    };
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rfind('@') {
        Some(i) => format!("***@{}", &authority[i + 1..]),
        None => authority.to_owned(),
    };
    let tail = match tail.find(['?', '#']) {
        Some(i) => format!("{}?***", &tail[..i]),
        None => tail.to_owned(),
    };
    match scheme {
        Some(s) => format!("{s}://{authority}{tail}"),
        None => format!("{authority}{tail}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PullPolicy;
    use proptest::prelude::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn module_names() {
        let cases = [
            ("oci://ghcr.io/org/filter:v1", "oci://ghcr.io/org/filter"),
            ("oci://GHCR.io/org/filter", "oci://ghcr.io/org/filter"),
            (
                "oci://127.0.0.1:5000/a/b:latest",
                "oci://127.0.0.1:5000/a/b",
            ),
            (
                "oci://docker.io/foo:v2",
                "oci://index.docker.io/library/foo",
            ),
            ("oci://foo/bar", "oci://index.docker.io/foo/bar"),
            ("oci://localhost/foo", "oci://localhost/foo"),
            (
                "http://example.com/a.wasm?x=1",
                "http://example.com/a.wasm?x=1",
            ),
        ];
        for (url, name) in cases {
            assert_eq!(ModuleUrl::parse(url).unwrap().module_name(), name, "{url}");
        }
        let pinned = ModuleUrl::parse(&format!("oci://ghcr.io/org/f:v1@{D}")).unwrap();
        assert_eq!(pinned.module_name(), "oci://ghcr.io/org/f");
        assert_eq!(pinned.pinned_digest().unwrap().to_prefixed(), D);
        assert!(!pinned.records_checksum());
        assert_eq!(pinned.oci().unwrap().reference(), D);
    }

    #[test]
    fn latest_detection_follows_the_reference() {
        assert!(
            ModuleUrl::parse("oci://ghcr.io/a:latest")
                .unwrap()
                .is_latest()
        );
        assert!(!ModuleUrl::parse("oci://ghcr.io/a").unwrap().is_latest());
        assert!(!ModuleUrl::parse("oci://ghcr.io/a:v1").unwrap().is_latest());
        assert!(!ModuleUrl::parse("http://h/a:latest").unwrap().is_latest());
        assert_eq!(
            ModuleUrl::parse("oci://ghcr.io/a")
                .unwrap()
                .oci()
                .unwrap()
                .reference(),
            "latest"
        );
    }

    #[test]
    fn other_schemes_parse_as_opaque_urls_named_by_the_whole_url() {
        for (raw, scheme) in [
            ("file:///srv/wasm/filter.wasm", "file"),
            ("S3://bucket/key/filter.wasm", "s3"),
            ("gs://bucket/filter.wasm?generation=3", "gs"),
            ("ftp://x/y", "ftp"),
            ("urn:wasm:filter", "urn"),
        ] {
            let u = ModuleUrl::parse(raw).unwrap();
            assert_eq!(u.scheme(), Scheme::Other(scheme.into()), "{raw}");
            assert_eq!(u.scheme().as_str(), scheme);
            assert!(u.has_scheme(&Scheme::new(scheme).unwrap()));
            assert!(!u.has_scheme(&Scheme::Https));
            assert_eq!(u.module_name(), raw);
            assert!(u.opaque().is_some() && u.http().is_none() && u.oci().is_none());
            assert!(u.records_checksum() && !u.is_latest() && u.pinned_digest().is_none());
        }
        // Pull policies as for http(s).
        let u = ModuleUrl::parse("s3://bucket/f.wasm").unwrap();
        assert!(!PullPolicy::Unspecified.ignores_resource_version(&u));
        assert!(PullPolicy::IfNotPresent.ignores_resource_version(&u));
        assert!(!PullPolicy::Always.ignores_resource_version(&u));
        // The three built-in schemes keep their own variants.
        assert_eq!(Scheme::new("HTTPS").unwrap(), Scheme::Https);
        assert_eq!(Scheme::new("oci").unwrap(), Scheme::Oci);
        assert!(Scheme::new("1abc").is_err() && Scheme::new("").is_err());
        // Redacted like any URL.
        let u = ModuleUrl::parse("s3://key:SECRET@bucket/f.wasm?sig=X").unwrap();
        assert_eq!(u.to_string(), "s3://***@bucket/f.wasm?***");
    }

    #[test]
    fn errors_use_the_reference_wording() {
        for bad in ["oci:foo", "http:x", "https:"] {
            let e = ModuleUrl::parse(bad).unwrap_err().to_string();
            assert!(
                e.starts_with("fail to parse Wasm module fetch url:"),
                "{bad:?}: {e}"
            );
        }
        for bad in [
            "",
            "nonsense",
            "http://",
            "oci://",
            "oci://Ghcr.io/UPPER/x",
            "oci://a/b:bad tag",
            "oci://a.io/b@sha256:abc",
        ] {
            let e = ModuleUrl::parse(bad).unwrap_err().to_string();
            assert!(
                e.starts_with("fail to parse Wasm module fetch url:"),
                "{bad:?}: {e}"
            );
        }
    }

    #[test]
    fn unparseable_urls_hide_everything_up_to_the_last_at() {
        for (raw, want) in [
            (
                "https://admin:HUNTER/SECRET@127.0.0.1:1/m.wasm",
                "https://***@127.0.0.1:1/m.wasm",
            ),
            (
                "https://admin:HUNTER?SECRET@127.0.0.1:1/m.wasm",
                "https://***@127.0.0.1:1/m.wasm",
            ),
            (
                "https://admin:HUNTER#SECRET@127.0.0.1:1/m.wasm?sig=X",
                "https://***@127.0.0.1:1/m.wasm?***",
            ),
            ("https://:HUNTER2SECRET@/m.wasm", "https://***@/m.wasm"),
            // A URL that parses keeps an `@` in its path.
            (
                "https://h.example/a@b/m.wasm",
                "https://h.example/a@b/m.wasm",
            ),
            ("https://u:p@h.example/a@b", "https://***@h.example/a@b"),
        ] {
            assert_eq!(redact_url(raw), want, "{raw}");
        }
    }

    #[test]
    fn credentials_never_leak() {
        let e = ModuleUrl::parse("http://user:hunter2@[bad/x?token=abc")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("hunter2") && !e.contains("abc"), "{e}");
        let u = ModuleUrl::parse("https://user:hunter2@h.example/m.wasm?sig=s3cr3t").unwrap();
        for shown in [u.to_string(), format!("{u:?}"), u.redacted()] {
            assert!(
                !shown.contains("hunter2") && !shown.contains("s3cr3t"),
                "{shown}"
            );
        }
        assert_eq!(u.redacted(), "https://***@h.example/m.wasm?***");
    }

    fn oci_url() -> impl Strategy<Value = String> {
        (
            prop_oneof![
                Just(String::new()),
                Just("ghcr.io/".to_owned()),
                Just("docker.io/".to_owned()),
                Just("127.0.0.1:5000/".to_owned()),
                Just("GHCR.IO/".to_owned()),
                Just("localhost/".to_owned()),
            ],
            "[a-z0-9]{1,8}(/[a-z0-9]{1,8}){0,2}",
            prop_oneof![
                Just(String::new()),
                "[a-zA-Z0-9_][a-zA-Z0-9_.-]{0,10}".prop_map(|t| format!(":{t}")),
            ],
            prop_oneof![Just(String::new()), Just(format!("@{D}"))],
        )
            .prop_map(|(r, p, t, d)| format!("oci://{r}{p}{t}{d}"))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn module_name_is_idempotent(url in prop_oneof![oci_url(), "https?://[a-z]{1,8}\\.example/[a-z/]{0,12}"]) {
            let u = ModuleUrl::parse(&url).unwrap();
            let name = u.module_name();
            let again = ModuleUrl::parse(&name).unwrap();
            prop_assert_eq!(again.module_name(), name);
            prop_assert!(!again.has_digest());
        }

        #[test]
        fn the_borrowed_redaction_is_the_redaction(s in "[a-z:/@?#.%]{0,40}") {
            let full = redact_owned(&s);
            let borrowed = redacted_url(&s);
            prop_assert_eq!(borrowed.as_ref(), full.as_str());
            prop_assert_eq!(redact_url(&s), full);
        }

        #[test]
        fn parse_never_panics_and_redaction_hides_userinfo(s in "\\PC{0,60}", pw in "[a-z]{12}") {
            let _ = ModuleUrl::parse(&s);
            let with_pw = format!("https://u:{pw}@{s}");
            if let Err(e) = ModuleUrl::parse(&with_pw) {
                prop_assert!(!e.to_string().contains(&pw));
            }
        }
    }
}
