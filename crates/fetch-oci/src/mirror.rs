//! Registry mirrors (pull-through caches): where they are, how they are
//! reached, and the order in which a pull asks its sources.
//!
//! Semantics are containerd's (`hosts.toml`): a registry's mirrors are tried in
//! the order given, the registry itself last. A mirror is asked with the
//! upstream's repository path (`/v2/<repo>/...`, under the mirror URL's own
//! path prefix) and `?ns=<registry>`, so one mirror can serve several
//! registries. A mirror is untrusted: everything asked by digest is checked
//! against the digest (manifests and blobs alike), and wrong bytes make the
//! pull move to the next source, storing nothing. What a mirror answers for a
//! tag is taken as the tag's digest (as containerd does): a mirror can serve a
//! stale tag or withhold one, not forge a digest.
//!
//! Every connection to a mirror goes through the same guarded transport code
//! as the registry's: a mirror with no settings of its own shares the
//! fetcher's transport; one with its own CA or `insecure` gets a transport of
//! its own, built from the same builder (same guard, proxies, insecure list
//! and CA bundles) plus its CA, or plus its own `host:port` in the insecure
//! list. A mirror URL written `http://` is reached over plain HTTP, as the
//! operator wrote it (containerd does the same).

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use url::Url;
use wasm_cache_core::{Error, FetchRequest, FetchSource, OciReference, redact_url};
use wasm_fetch_transport::{Transport, TransportBuilder};

use crate::auth::Credentials;
use crate::fetcher::{Mode, OciFetcher, Session};

/// How long a mirror that could not be connected to is skipped (tried again
/// only if every other source fails).
const DOWN_FOR: Duration = Duration::from_secs(30);

/// One mirror of a registry: its URL and how to reach it. Pass it to
/// [`OciFetcherBuilder::mirror`](crate::OciFetcherBuilder::mirror) (or the
/// cache builder's `mirror_with`).
///
/// The URL is `https://host[:port][/prefix]` or `http://...` (plain HTTP, as
/// written); without a scheme, `https` is meant. Requests go to
/// `<url>/v2/<repository>/...?ns=<registry>` (a `/v2` at the end of the URL's
/// path is not repeated).
///
/// `Debug` never shows the password.
///
/// ```
/// use wasm_fetch_oci::{Mirror, OciFetcher};
///
/// let fetcher = OciFetcher::builder()
///     .mirror("ghcr.io", Mirror::new("https://mirror.local:5000"))
///     .mirror(
///         "ghcr.io",
///         Mirror::new("https://10.0.0.5:5000").insecure(true).credentials("node", "s3cret"),
///     )
///     .build()?;
/// assert!(!format!("{fetcher:?}").contains("s3cret"));
/// # Ok::<(), wasm_fetch_oci::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
#[must_use]
pub struct Mirror {
    url: String,
    insecure: bool,
    ca: Vec<Ca>,
    credentials: Option<(String, String)>,
}

#[derive(Clone, PartialEq, Eq)]
enum Ca {
    File(PathBuf),
    Pem(Vec<u8>),
}

impl Mirror {
    /// A mirror at `url`, verified TLS (system roots and the fetcher's CA
    /// bundles), anonymous unless the docker config or pull secret has
    /// credentials for its host.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            insecure: false,
            ca: Vec::new(),
            credentials: None,
        }
    }

    /// Whether the mirror's TLS certificate goes unverified (its `host:port`
    /// joins the insecure list of its own transport; the fetcher's list is
    /// unchanged).
    pub fn insecure(mut self, insecure: bool) -> Self {
        self.insecure = insecure;
        self
    }

    /// Also trusts the CA certificates in this PEM file, for this mirror only
    /// (read once, when the fetcher is built).
    pub fn ca_file(mut self, path: impl AsRef<Path>) -> Self {
        self.ca.push(Ca::File(path.as_ref().to_owned()));
        self
    }

    /// Also trusts these PEM CA certificates, for this mirror only.
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca.push(Ca::Pem(pem.into()));
        self
    }

    /// User and password for this mirror (Basic, or for its token realm).
    /// Without them, the pull secret's or docker config's entry for the
    /// mirror's host is used, if any; the upstream's credentials never go
    /// to a mirror.
    pub fn credentials(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.credentials = Some((user.into(), password.into()));
        self
    }

    /// The URL as given.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Whether TLS verification is off for this mirror.
    pub fn is_insecure(&self) -> bool {
        self.insecure
    }

    /// Checks the URL, and `registry` as a registry name, as
    /// [`OciFetcherBuilder::build`](crate::OciFetcherBuilder::build) will
    /// (CA files are read only then), so a configuration can be refused
    /// early, naming where it came from.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] saying what is wrong (never a password).
    pub fn check(&self, registry: &str) -> Result<(), Error> {
        let registry = check_registry(registry)?;
        parse_url(&self.url).map(|_| ()).map_err(|why| {
            invalid(format!(
                "mirror {} of {registry}: {why}",
                redact_url(&self.url)
            ))
        })
    }
}

impl fmt::Debug for Mirror {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mirror")
            .field("url", &redact_url(&self.url))
            .field("insecure", &self.insecure)
            .field("ca_bundles", &self.ca.len())
            .field(
                "credentials",
                &self.credentials.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// A parsed mirror, ready to be asked.
pub(crate) struct Endpoint {
    /// The URL for logs (no user-info, no query).
    pub(crate) shown: String,
    /// `host[:port]` as in the URL.
    pub(crate) authority: String,
    pub(crate) mode: Mode,
    /// The path before `/v2`, without a trailing slash (often empty).
    pub(crate) prefix: String,
    pub(crate) insecure: bool,
    /// `None`: the fetcher's own transport.
    transport: Option<Transport>,
    pub(crate) credentials: Option<Credentials>,
    down_until: Mutex<Option<Instant>>,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mirror")
            .field("url", &self.shown)
            .field("insecure", &self.insecure)
            .field("own_transport", &self.transport.is_some())
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    fn is_down(&self) -> bool {
        crate::fetcher::lock(&self.down_until).is_some_and(|t| Instant::now() < t)
    }

    fn mark_down(&self) {
        *crate::fetcher::lock(&self.down_until) = Some(Instant::now() + DOWN_FOR);
    }

    fn mark_up(&self) {
        *crate::fetcher::lock(&self.down_until) = None;
    }
}

/// What a session needs to know about the mirror it talks to.
#[derive(Debug, Clone)]
pub(crate) struct MirrorTarget {
    pub(crate) ns: String,
    pub(crate) mode: Mode,
    pub(crate) prefix: String,
}

/// Each registry's mirrors, keyed by the lower-cased registry.
#[derive(Debug, Default)]
pub(crate) struct Mirrors(HashMap<String, Arc<[Arc<Endpoint>]>>);

impl Mirrors {
    fn of(&self, registry: &str) -> Option<Arc<[Arc<Endpoint>]>> {
        if self.0.is_empty() {
            return None;
        }
        self.0.get(&registry.to_ascii_lowercase()).cloned()
    }
}

fn invalid(reason: String) -> Error {
    Error::InvalidConfig { reason }
}

/// Checks a registry name as references write it: `host[:port]`.
fn check_registry(registry: &str) -> Result<String, Error> {
    let r = registry.trim();
    if r.is_empty()
        || r.contains("://")
        || r.contains('/')
        || r.contains(char::is_whitespace)
        || r.contains('@')
    {
        return Err(invalid(format!(
            "mirror registry {:?} must be a registry host as references write it (host or host:port)",
            redact_url(r)
        )));
    }
    Ok(r.to_ascii_lowercase())
}

/// Parses one mirror: its URL, and its own transport when it has settings.
fn endpoint(base: &TransportBuilder, registry: &str, m: &Mirror) -> Result<Endpoint, Error> {
    let shown_raw = redact_url(&m.url);
    let bad = |why: &str| invalid(format!("mirror {shown_raw} of {registry}: {why}"));
    let (url, mode) = parse_url(&m.url).map_err(|why| bad(&why))?;
    let host = url.host_str().unwrap_or_default();
    let port = url.port_or_known_default().unwrap_or(443);
    let authority = match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_owned(),
    };
    let mut prefix = url.path().trim_end_matches('/').to_owned();
    if let Some(p) = prefix.strip_suffix("/v2") {
        prefix = p.to_owned();
    }
    let transport = if m.insecure || !m.ca.is_empty() {
        let mut b = base.clone();
        if m.insecure {
            // The one insecure-host syntax, for this mirror's transport only.
            b = b.insecure_hosts([format!("{host}:{port}")]);
        }
        for ca in &m.ca {
            b = match ca {
                Ca::File(p) => b.ca_file(p),
                Ca::Pem(pem) => b.ca_pem(pem.clone()),
            };
        }
        Some(b.build().map_err(|e| bad(&e.to_string()))?)
    } else {
        None
    };
    let shown = format!(
        "{}://{authority}{}",
        url.scheme(),
        url.path().trim_end_matches('/')
    );
    Ok(Endpoint {
        shown,
        authority,
        mode,
        prefix,
        insecure: m.insecure,
        transport,
        credentials: m
            .credentials
            .as_ref()
            .map(|(user, password)| Credentials::Basic {
                user: user.clone(),
                password: password.clone(),
            }),
        down_until: Mutex::new(None),
    })
}

/// A mirror URL, checked: http(s), a host, no user-info, query or fragment.
fn parse_url(raw: &str) -> Result<(Url, Mode), String> {
    let raw = raw.trim();
    let with_scheme = if raw.contains("://") {
        raw.to_owned()
    } else {
        format!("https://{raw}")
    };
    let url = Url::parse(&with_scheme).map_err(|e| format!("not a URL: {e}"))?;
    let mode = match url.scheme() {
        "https" => Mode::Https,
        "http" => Mode::Http,
        other => return Err(format!("scheme {other} is not http or https")),
    };
    if !url.username().is_empty() || url.password().is_some() {
        return Err(
            "credentials do not belong in the URL; give them as the mirror's credentials"
                .to_owned(),
        );
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("a mirror URL has no query or fragment".to_owned());
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("no host".to_owned());
    }
    if url.port_or_known_default().is_none() {
        return Err("no port".to_owned());
    }
    Ok((url, mode))
}

/// Parses every mirror, in order, per registry.
pub(crate) fn endpoints(
    base: &TransportBuilder,
    mirrors: &[(String, Mirror)],
) -> Result<Vec<(String, Endpoint)>, Error> {
    mirrors
        .iter()
        .map(|(registry, m)| {
            let registry = check_registry(registry)?;
            let e = endpoint(base, &registry, m)?;
            Ok((registry, e))
        })
        .collect()
}

/// The mirrors by registry; those without a transport of their own use `shared`.
pub(crate) fn with_shared(endpoints: Vec<(String, Endpoint)>, shared: &Transport) -> Mirrors {
    let mut map: HashMap<String, Vec<Arc<Endpoint>>> = HashMap::new();
    for (registry, mut e) in endpoints {
        if e.transport.is_none() {
            e.transport = Some(shared.clone());
        }
        let list = map.entry(registry).or_default();
        // The same mirror twice for one registry is asked once.
        if !list.iter().any(|x| x.shown == e.shown) {
            list.push(Arc::new(e));
        }
    }
    Mirrors(map.into_iter().map(|(k, v)| (k, v.into())).collect())
}

/// The sources of one operation, in order: the registry's mirrors (those
/// not known to be down), the registry, then mirrors skipped as down.
pub(crate) struct Chain<'a> {
    fetcher: &'a OciFetcher,
    req: &'a FetchRequest,
    oci: &'a OciReference,
    mirrors: Option<Arc<[Arc<Endpoint>]>>,
    next: usize,
    skipped: Vec<usize>,
    upstream_tried: bool,
    /// The mirror the current session talks to.
    current: Option<usize>,
    /// The error to report when every source failed: the registry's own,
    /// else the last mirror's.
    upstream_error: Option<Error>,
    last_error: Option<Error>,
    /// What each mirror that failed said, for the warning when all fail.
    mirror_failures: Vec<String>,
    what: &'static str,
}

impl<'a> Chain<'a> {
    pub(crate) fn new(
        fetcher: &'a OciFetcher,
        req: &'a FetchRequest,
        oci: &'a OciReference,
        what: &'static str,
    ) -> Self {
        Self {
            fetcher,
            req,
            oci,
            mirrors: fetcher.inner.mirrors.of(oci.registry()),
            next: 0,
            skipped: Vec::new(),
            upstream_tried: false,
            current: None,
            upstream_error: None,
            last_error: None,
            mirror_failures: Vec::new(),
            what,
        }
    }

    /// Whether the registry has mirrors (so a source is worth logging).
    pub(crate) fn has_mirrors(&self) -> bool {
        self.mirrors.as_ref().is_some_and(|m| !m.is_empty())
    }

    /// The next source's session, or the error to report when none is left.
    pub(crate) async fn next(&mut self) -> Result<Session<'a>, Error> {
        let mirrors = self
            .mirrors
            .clone()
            .unwrap_or_else(|| Arc::from(Vec::new()));
        loop {
            let index = if self.next < mirrors.len() {
                let i = self.next;
                self.next += 1;
                if mirrors[i].is_down() {
                    tracing::debug!(mirror = %mirrors[i].shown, "mirror recently unreachable; asked only if the registry fails too");
                    self.skipped.push(i);
                    continue;
                }
                i
            } else if !self.upstream_tried {
                self.upstream_tried = true;
                self.current = None;
                return self.fetcher.session(self.req, self.oci).await;
            } else if !self.skipped.is_empty() {
                self.skipped.remove(0)
            } else {
                self.all_failed();
                return Err(self
                    .upstream_error
                    .take()
                    .or_else(|| self.last_error.take())
                    .unwrap_or_else(|| Error::InvalidConfig {
                        reason: "no source left to ask".to_owned(),
                    }));
            };
            let m = &mirrors[index];
            match self.fetcher.mirror_session(self.req, self.oci, m).await {
                Ok(s) => {
                    self.current = Some(index);
                    return Ok(s);
                }
                Err(e) => {
                    tracing::warn!(mirror = %m.shown, error = %e, "mirror not usable; trying the next source");
                    self.mirror_failures.push(format!("{}: {e}", m.shown));
                    self.last_error = Some(e);
                }
            }
        }
    }

    /// Runs one attempt at the current source. A mirror gets at most half
    /// of the time left (for the whole attempt, body included), so a mirror
    /// that accepts connections and then hangs leaves the next source, and
    /// finally the registry, at least the other half.
    pub(crate) async fn attempt<T>(
        &self,
        op: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        let Some(m) = self
            .current
            .and_then(|i| self.mirrors.as_ref().map(|m| Arc::clone(&m[i])))
        else {
            return op.await;
        };
        let share = self.req.remaining(Instant::now()) / 2;
        match tokio::time::timeout(share, op).await {
            Ok(r) => r,
            Err(_) => Err(Error::Transport {
                url: self.req.url.redacted(),
                reason: format!(
                    "mirror {} did not finish within {:.1} s, half the time left",
                    m.shown,
                    share.as_secs_f64()
                ),
                source: None,
            }),
        }
    }

    /// Records that `s` failed with `e`: `Ok` when another source is to be
    /// tried, `Err` with the error to return when not (the deadline passed,
    /// the sink failed, or the registry itself failed and nothing is left).
    pub(crate) fn failed(&mut self, e: Error) -> Result<(), Error> {
        if matches!(e, Error::Timeout { .. } | Error::Sink { .. }) {
            return Err(e);
        }
        match self.current.take() {
            Some(i) => {
                if let Some(m) = self.mirrors.as_ref().map(|m| &m[i]) {
                    if connection_failure(&e) {
                        m.mark_down();
                    }
                    tracing::info!(url = %self.req.url.redacted(), mirror = %m.shown, what = self.what, error = %e, "mirror failed; trying the next source");
                    self.mirror_failures.push(format!("{}: {e}", m.shown));
                }
                self.last_error = Some(e);
                Ok(())
            }
            None if self.skipped.is_empty() => {
                self.all_failed();
                Err(e)
            }
            None => {
                tracing::info!(url = %self.req.url.redacted(), what = self.what, error = %e, "registry failed; asking mirrors that were unreachable before");
                self.upstream_error = Some(e);
                Ok(())
            }
        }
    }

    /// Every source failed: what the mirrors said goes to the log (the error
    /// returned is the registry's own, which does not mention them).
    fn all_failed(&mut self) {
        if !self.mirror_failures.is_empty() {
            tracing::warn!(
                url = %self.req.url.redacted(),
                what = self.what,
                mirrors = %self.mirror_failures.join("; "),
                "every mirror failed, and then the registry"
            );
            self.mirror_failures.clear();
        }
    }

    /// Records that the current source answered; logs which one (info when
    /// the registry has mirrors) and says what kind it was.
    pub(crate) fn served(&mut self) -> FetchSource {
        match self
            .current
            .and_then(|i| self.mirrors.as_ref().map(|m| &m[i]))
        {
            Some(m) => {
                m.mark_up();
                tracing::info!(url = %self.req.url.redacted(), mirror = %m.shown, what = self.what, "served by mirror");
                FetchSource::Mirror
            }
            None => {
                if self.has_mirrors() {
                    tracing::info!(url = %self.req.url.redacted(), registry = %self.oci.registry(), what = self.what, "served by the registry (upstream)");
                }
                FetchSource::Upstream
            }
        }
    }
}

/// Whether `e` says the host could not be reached at all (worth skipping it
/// for a while), as opposed to an answer we did not like.
fn connection_failure(e: &Error) -> bool {
    match e {
        Error::Transport { .. } => true,
        Error::DownloadFailed { last, .. } => connection_failure(last),
        _ => false,
    }
}

impl OciFetcher {
    /// A session with mirror `m` for the request's repository.
    pub(crate) async fn mirror_session<'a>(
        &'a self,
        req: &FetchRequest,
        oci: &OciReference,
        m: &Endpoint,
    ) -> Result<Session<'a>, Error> {
        let (creds, helper_key) = match &m.credentials {
            Some(c) => (c.clone(), None),
            // The mirror's own entry in the pull secret or docker config:
            // the upstream's credentials are never sent to a mirror.
            None => self.credentials(req, &m.authority).await?,
        };
        let transport = m
            .transport
            .clone()
            .unwrap_or_else(|| self.inner.transport.clone());
        let insecure = m.insecure
            || m.mode == Mode::Http
            || transport.insecure().matches_registry(&m.authority);
        Ok(Session {
            inner: &self.inner,
            url: req.url.redacted(),
            creds_key: creds.cache_key(&m.authority),
            helper_key,
            creds,
            insecure,
            repository: oci.repository().to_owned(),
            registry: m.authority.clone(),
            mirror: Some(MirrorTarget {
                ns: oci.registry().to_owned(),
                mode: m.mode,
                prefix: m.prefix.clone(),
            }),
            transport,
            // One attempt: the next source is the retry.
            backoff: self.inner.backoff.with_max_attempts(1),
            deadline: req.deadline,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<Endpoint, Error> {
        endpoint(&Transport::builder(), "ghcr.io", &Mirror::new(url))
    }

    #[test]
    fn urls_like_containerd() {
        let e = parse("https://mirror.local:5000").unwrap();
        assert_eq!(
            (e.authority.as_str(), e.prefix.as_str()),
            ("mirror.local:5000", "")
        );
        assert_eq!(e.mode, Mode::Https);
        let e = parse("mirror.local").unwrap();
        assert_eq!(
            (e.authority.as_str(), e.mode),
            ("mirror.local", Mode::Https)
        );
        let e = parse("http://10.0.0.1:5000/cache/v2/").unwrap();
        assert_eq!((e.prefix.as_str(), e.mode), ("/cache", Mode::Http));
        let e = parse("https://[::1]:5000/p").unwrap();
        assert_eq!(
            (e.authority.as_str(), e.prefix.as_str()),
            ("[::1]:5000", "/p")
        );
        for bad in [
            "ftp://m/",
            "https://u:pw@m/",
            "https://m/?x=1",
            "https://",
            "",
        ] {
            let e = parse(bad).map(|_| ()).unwrap_err();
            assert!(!e.to_string().contains("pw"), "{e}");
        }
        for bad in ["", "https://ghcr.io", "ghcr.io/org", "a b"] {
            assert!(check_registry(bad).is_err(), "{bad:?}");
        }
        assert_eq!(check_registry("GHCR.io").unwrap(), "ghcr.io");
    }

    #[test]
    fn debug_hides_the_password() {
        let m = Mirror::new("https://m.local").credentials("user", "pa55word");
        assert!(!format!("{m:?}").contains("pa55word"));
        let e = endpoint(&Transport::builder(), "ghcr.io", &m).unwrap();
        assert!(!format!("{e:?}").contains("pa55word"));
    }

    #[test]
    fn a_bad_mirror_ca_names_the_mirror() {
        let m = Mirror::new("https://m.local").ca_pem(b"not pem".to_vec());
        let e = endpoint(&Transport::builder(), "ghcr.io", &m).unwrap_err();
        assert!(e.to_string().contains("https://m.local"), "{e}");
    }
}
