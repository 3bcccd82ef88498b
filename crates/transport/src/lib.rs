//! # wasm-fetch-transport
//!
//! The one HTTP(S) transport of wasm-cache's fetchers (HTTP and OCI): hyper 1
//! with hyper-util's pooled client and hyper-rustls on the ring provider.
//! Every rule about where bytes may come from and how many of them we read
//! lives here, once:
//!
//! - **Address guard** ([`Guard`]) in the connector: the connector resolves
//!   every host itself, checks every resolved address and connects to exactly
//!   those, for every connection (first request, redirect hop, token realm).
//!   There is no check-then-use window.
//! - **TLS**: webpki roots, the system's roots and extra CA bundles. Extra
//!   bundles are read and checked when the [`Transport`] is built; the
//!   system's roots are loaded once per process, on the first request that
//!   verifies a certificate (plain-HTTP and insecure-listed hosts never load
//!   them); rustls with
//!   `rustls::crypto::ring::default_provider()` passed explicitly (the
//!   process-wide default provider is never installed nor used).
//! - **Insecure hosts** ([`InsecureHosts`]): `host:port`, `host` (any port)
//!   or `*`; one meaning for `http(s)://` URLs and OCI registries. Listed
//!   hosts get a separate pool whose TLS does not verify certificates.
//! - **Redirects**: at most [`DEFAULT_MAX_REDIRECTS`] hops, each a new
//!   request through the guarded connector; https to http refused; a
//!   redirect from a public address never leads to loopback or private
//!   addresses (the rest of the chain uses the strict guard);
//!   `Authorization` dropped when the origin changes (registries redirect
//!   blobs to object storage).
//! - **Bounded reads** ([`Response::bytes_limited`]): a declared length over
//!   the cap fails before reading; otherwise reading stops as soon as the cap
//!   is passed. Nothing is buffered before the check.
//! - **Retries** ([`RetryDriver`]): `core::retry::Backoff`, never sleeping past
//!   the deadline; TLS failures and plain-HTTP answers to HTTPS are final.
//! - **Proxies** ([`ProxyConfig`]): `HTTP(S)_PROXY` / `NO_PROXY`; `CONNECT`
//!   for https targets, absolute-form requests for http targets. The guard
//!   checks the target before the proxy is asked (see docs/SECURITY.md for
//!   what a proxy can and cannot enforce).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{AUTHORIZATION, CONTENT_LENGTH, LOCATION, USER_AGENT};
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use http_body_util::{BodyExt as _, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use url::Url;
use wasm_cache_core::retry::Backoff;
use wasm_cache_core::{Error, redact_url};

mod connect;
mod guard;
mod insecure;
mod proxy;
mod tls;

pub use crate::guard::{BlockedAddr, Guard, embedded_v4, is_public, parse_cidr};
pub use crate::insecure::{InsecureHosts, split_registry};
pub use crate::proxy::{Proxy, ProxyConfig};

use crate::connect::{GuardedConnector, Peer};

/// `Authorization: Basic ...` from the URL's user-info (percent-decoded),
/// marked sensitive so hyper never logs it; `None` without user-info. The
/// transport drops it on a redirect to another origin.
pub fn basic_auth(url: &Url) -> Option<HeaderValue> {
    let mut value = HeaderValue::from_str(&proxy::basic_credentials(url)?).ok()?;
    value.set_sensitive(true);
    Some(value)
}

/// The default bound on redirects followed for one request.
pub const DEFAULT_MAX_REDIRECTS: usize = 10;

/// The default connect timeout (per address tried).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// The `User-Agent` of every request.
pub const USER_AGENT_VALUE: &str = concat!("wasm-cache/", env!("CARGO_PKG_VERSION"));

type HttpClient = Client<HttpsConnector<GuardedConnector>, Full<Bytes>>;

/// The guarded transport. Cheap to clone (clones share pools and settings).
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

struct Inner {
    /// For the normal guard: the verifying client (built on first use: it
    /// needs the trust roots) and the one for plain HTTP and insecure hosts.
    normal: Clients,
    /// The same for the strict guard (no loopback or private).
    strict: Clients,
    /// The verifying TLS configuration, built on first use.
    verifying: OnceLock<Result<rustls::ClientConfig, Error>>,
    native_roots: bool,
    extra_roots: Vec<rustls::pki_types::CertificateDer<'static>>,
    insecure: InsecureHosts,
    max_redirects: usize,
    guard: Arc<Guard>,
    proxy: Arc<ProxyConfig>,
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.inner;
        f.debug_struct("Transport")
            .field("insecure", &i.insecure)
            .field("max_redirects", &i.max_redirects)
            .field("guard", &i.guard)
            .field("proxy", &i.proxy)
            .finish_non_exhaustive()
    }
}

/// A builder's options, parsed and checked.
struct Checked {
    insecure: InsecureHosts,
    blocked: Vec<ipnet::IpNet>,
    extra_roots: Vec<rustls::pki_types::CertificateDer<'static>>,
    proxy: ProxyConfig,
}

/// The two clients of one guard.
struct Clients {
    connector: GuardedConnector,
    verified: OnceLock<HttpClient>,
    /// Plain HTTP, and HTTPS to insecure-listed hosts (no certificate check).
    unverified: HttpClient,
}

#[derive(Debug, Clone)]
enum CaSource {
    File(PathBuf),
    Pem(Vec<u8>),
}

/// Configures a [`Transport`]; start with [`Transport::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct TransportBuilder {
    connect_timeout: Duration,
    max_redirects: usize,
    insecure: Vec<String>,
    ca: Vec<CaSource>,
    native_roots: bool,
    blocked_cidrs: Vec<String>,
    allow_private: bool,
    allow_loopback: bool,
    proxy: Option<ProxyConfig>,
}

impl Default for TransportBuilder {
    fn default() -> Self {
        Self {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            max_redirects: DEFAULT_MAX_REDIRECTS,
            insecure: Vec::new(),
            ca: Vec::new(),
            native_roots: true,
            blocked_cidrs: Vec::new(),
            allow_private: true,
            allow_loopback: true,
            proxy: None,
        }
    }
}

impl TransportBuilder {
    /// The timeout of one TCP connection attempt (default
    /// [`DEFAULT_CONNECT_TIMEOUT`]).
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }

    /// How many redirects one request follows (default [`DEFAULT_MAX_REDIRECTS`]).
    pub fn max_redirects(mut self, n: usize) -> Self {
        self.max_redirects = n;
        self
    }

    /// Adds insecure hosts ([`InsecureHosts`] syntax).
    pub fn insecure_hosts<I, S>(mut self, hosts: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.insecure.extend(hosts.into_iter().map(Into::into));
        self
    }

    /// Also trusts the CA certificates in this PEM file (read once, by
    /// [`TransportBuilder::build`]).
    pub fn ca_file(mut self, path: impl AsRef<Path>) -> Self {
        self.ca.push(CaSource::File(path.as_ref().to_owned()));
        self
    }

    /// Also trusts the CA certificates in these PEM bytes.
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca.push(CaSource::Pem(pem.into()));
        self
    }

    /// Whether the system's root certificates are trusted besides webpki's
    /// (default true; unreadable system stores are skipped).
    pub fn native_roots(mut self, enabled: bool) -> Self {
        self.native_roots = enabled;
        self
    }

    /// Adds operator CIDRs (or single addresses) never to connect to.
    pub fn blocked_cidrs<I, S>(mut self, cidrs: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.blocked_cidrs
            .extend(cidrs.into_iter().map(|s| s.as_ref().to_owned()));
        self
    }

    /// Whether private addresses may be connected to (default true).
    pub fn allow_private(mut self, allow: bool) -> Self {
        self.allow_private = allow;
        self
    }

    /// Whether loopback addresses may be connected to (default true).
    pub fn allow_loopback(mut self, allow: bool) -> Self {
        self.allow_loopback = allow;
        self
    }

    /// The proxy configuration (default: [`ProxyConfig::from_env`], read by
    /// [`TransportBuilder::build`]).
    pub fn proxy(mut self, proxy: ProxyConfig) -> Self {
        self.proxy = Some(proxy);
        self
    }

    /// Checks the options as [`build`](Self::build) would (lists, CA bundles,
    /// proxy variables) without building anything: cheap, for callers that
    /// build the transport (or a fetcher around it) later, on first use, but
    /// want a bad option reported now.
    ///
    /// # Errors
    /// As [`build`](Self::build).
    pub fn check(&self) -> Result<(), Error> {
        self.checked().map(drop)
    }

    fn checked(&self) -> Result<Checked, Error> {
        let invalid = |reason: String| Error::InvalidConfig { reason };
        if self.connect_timeout.is_zero() {
            return Err(invalid(
                "the connect timeout must be more than zero".to_owned(),
            ));
        }
        let insecure = InsecureHosts::parse(&self.insecure).map_err(invalid)?;
        let blocked = self
            .blocked_cidrs
            .iter()
            .map(|s| {
                parse_cidr(s).ok_or_else(|| {
                    invalid(format!(
                        "blocked CIDR {s:?} is neither a CIDR nor an IP address"
                    ))
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let mut bundles = Vec::new();
        for source in &self.ca {
            match source {
                CaSource::File(path) => {
                    let bytes = std::fs::read(path).map_err(|e| {
                        invalid(format!("cannot read CA file {}: {e}", path.display()))
                    })?;
                    bundles.push((format!("file {}", path.display()), bytes));
                }
                CaSource::Pem(pem) => bundles.push(("given as PEM".to_owned(), pem.clone())),
            }
        }
        let extra_roots = tls::extra_roots(&bundles)?;
        let proxy = match &self.proxy {
            Some(p) => p.clone(),
            None => ProxyConfig::from_env().map_err(invalid)?,
        };
        Ok(Checked {
            insecure,
            blocked,
            extra_roots,
            proxy,
        })
    }

    /// Builds the transport: parses the lists, reads and checks the CA
    /// bundles, reads the proxy variables. The system's roots are not loaded
    /// here: once per process, by the first request that verifies a
    /// certificate.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming what is wrong: a zero timeout, a CIDR
    /// or insecure-host entry that does not parse, an unreadable or
    /// certificate-less CA bundle (naming the file), a proxy variable that is
    /// not a usable proxy URL.
    pub fn build(self) -> Result<Transport, Error> {
        let Checked {
            insecure,
            blocked,
            extra_roots,
            proxy,
        } = self.checked()?;
        let proxy = Arc::new(proxy);
        let guard = Arc::new(Guard {
            blocked,
            allow_private: self.allow_private,
            allow_loopback: self.allow_loopback,
        });
        let strict_guard = Arc::new(guard.strict());
        let unverified = tls::insecure()?;
        let pair = |g: &Arc<Guard>| {
            let connector = GuardedConnector {
                guard: Arc::clone(g),
                connect_timeout: self.connect_timeout,
                proxy: Arc::clone(&proxy),
            };
            Clients {
                unverified: client(&unverified, connector.clone()),
                verified: OnceLock::new(),
                connector,
            }
        };
        Ok(Transport {
            inner: Arc::new(Inner {
                normal: pair(&guard),
                strict: pair(&strict_guard),
                verifying: OnceLock::new(),
                native_roots: self.native_roots,
                extra_roots,
                insecure,
                max_redirects: self.max_redirects,
                guard,
                proxy,
            }),
        })
    }
}

fn client(tls: &rustls::ClientConfig, connector: GuardedConnector) -> HttpClient {
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls.clone())
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(connector);
    Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .build(https)
}

/// One request. Build with [`Request::get`].
#[derive(Debug, Clone)]
pub struct Request {
    /// The method (`GET`, `HEAD`, or `POST` for a token request).
    pub method: Method,
    /// The URL (user-info is never sent as part of the target).
    pub url: Url,
    /// Extra headers; `Authorization` among them goes to the URL's origin only.
    pub headers: HeaderMap,
    /// Refuse loopback and private addresses for this request's connections
    /// (and its redirects), whatever the transport allows.
    pub strict: bool,
    /// What errors name instead of the (redacted) URL of the failing hop.
    pub label: Option<String>,
    /// The body (a `POST` form); empty for `GET` and `HEAD`. Dropped when a
    /// redirect turns the request into a `GET`.
    pub body: Bytes,
}

impl Request {
    /// A `GET` of `url`.
    pub fn get(url: Url) -> Self {
        Self {
            method: Method::GET,
            url,
            headers: HeaderMap::new(),
            strict: false,
            label: None,
            body: Bytes::new(),
        }
    }

    /// A `POST` of an `application/x-www-form-urlencoded` body to `url`
    /// (an OAuth2 token request).
    pub fn post_form(url: Url, form: impl Into<Bytes>) -> Self {
        let mut r = Self::get(url);
        r.method = Method::POST;
        r.body = form.into();
        r.headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        r
    }

    /// Adds a header.
    #[must_use]
    pub fn header(mut self, name: http::header::HeaderName, value: HeaderValue) -> Self {
        self.headers.append(name, value);
        self
    }

    /// Sets [`Request::strict`].
    #[must_use]
    pub fn strict(mut self, strict: bool) -> Self {
        self.strict = strict;
        self
    }

    /// Sets [`Request::label`].
    #[must_use]
    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }
}

/// Why a transport error is what it is; the `source` of the
/// [`Error::Transport`]s this crate returns.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailureKind {
    /// The TLS handshake failed (certificate, alert): retrying cannot help.
    Tls,
    /// An HTTPS request got a plain-HTTP answer: retrying cannot help.
    HttpResponseToHttps,
    /// Anything else (connect, reset, timeout): may be retried.
    Other,
}

/// The source of a transport [`Error::Transport`].
#[derive(Debug, Clone)]
pub struct Failure {
    /// What kind of failure.
    pub kind: FailureKind,
    reason: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for Failure {}

/// The reason given when an HTTPS request got a plain-HTTP answer.
pub const HTTP_RESPONSE_TO_HTTPS: &str =
    "server gave an HTTP response to an HTTPS request; list it with --insecure-registry";

/// The kind of a transport error, if it came from this crate.
pub fn failure_kind(e: &Error) -> Option<&FailureKind> {
    match e {
        Error::Transport {
            source: Some(s), ..
        } => s.downcast_ref::<Failure>().map(|f| &f.kind),
        Error::DownloadFailed { last, .. } => failure_kind(last),
        _ => None,
    }
}

/// The retry rule of every fetcher: transport failures and retryable 5xx,
/// except TLS failures and plain-HTTP answers to HTTPS, which are final.
pub fn is_retryable(e: &Error) -> bool {
    match failure_kind(e) {
        Some(FailureKind::Tls | FailureKind::HttpResponseToHttps) => false,
        _ => e.is_retryable(),
    }
}

fn transport_error(label: &str, kind: FailureKind, reason: String) -> Error {
    Error::Transport {
        url: label.to_owned(),
        reason: reason.clone(),
        source: Some(Box::new(Failure { kind, reason })),
    }
}

/// Maps a client error: the guard's refusal is [`Error::Blocked`], anything
/// else [`Error::Transport`] with the cause chain as the reason.
fn classify(label: &str, e: &(dyn std::error::Error + 'static)) -> Error {
    let mut reasons: Vec<String> = Vec::new();
    let mut kind = FailureKind::Other;
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(blocked) = c.downcast_ref::<BlockedAddr>() {
            return Error::Blocked {
                url: label.to_owned(),
                reason: blocked.to_string(),
            };
        }
        if let Some(tls) = c.downcast_ref::<rustls::Error>() {
            kind = match tls {
                rustls::Error::InvalidMessage(_) => FailureKind::HttpResponseToHttps,
                _ => FailureKind::Tls,
            };
        }
        let text = c.to_string();
        if !reasons.iter().any(|r| r.contains(&text)) {
            reasons.push(text);
        }
        // `io::Error::source` skips the wrapped error itself; look inside.
        cause = match c
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner),
            None => c.source(),
        };
    }
    let joined = reasons.join(": ");
    if kind == FailureKind::Other
        && (joined.contains("invalid peer certificate") || joined.contains("received fatal alert"))
    {
        kind = FailureKind::Tls;
    }
    if kind == FailureKind::HttpResponseToHttps {
        return transport_error(label, kind, HTTP_RESPONSE_TO_HTTPS.to_owned());
    }
    transport_error(label, kind, joined)
}

/// A response whose status is final (not a followed redirect).
#[derive(Debug)]
pub struct Response {
    /// The status.
    pub status: StatusCode,
    /// The headers.
    pub headers: HeaderMap,
    /// The URL that answered (after redirects).
    pub url: Url,
    body: hyper::body::Incoming,
    label: String,
}

/// Why a bounded read failed.
#[derive(Debug)]
pub enum ReadError {
    /// More than the cap: `limit` bytes.
    TooLarge {
        /// The cap.
        limit: u64,
    },
    /// The body could not be read.
    Transport(Error),
}

impl Response {
    /// The declared `Content-Length`, if any.
    pub fn content_length(&self) -> Option<u64> {
        self.headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
    }

    /// What errors about this response name.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The next chunk of the body, `None` at its end.
    ///
    /// # Errors
    /// [`Error::Transport`] when the body cannot be read.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, Error> {
        loop {
            let Some(frame) = self.body.frame().await else {
                return Ok(None);
            };
            let frame = frame.map_err(|e| {
                let mut reason = format!("reading the body: {e}");
                if let Some(s) = std::error::Error::source(&e) {
                    reason.push_str(&format!(": {s}"));
                }
                transport_error(&self.label, FailureKind::Other, reason)
            })?;
            if let Ok(data) = frame.into_data()
                && !data.is_empty()
            {
                return Ok(Some(data));
            }
        }
    }

    /// The whole body, if it is at most `limit` bytes. A larger declared
    /// length fails before reading; otherwise reading stops as soon as the
    /// body passes the cap (memory stays under `limit` plus one chunk).
    ///
    /// # Errors
    /// [`ReadError::TooLarge`] or [`ReadError::Transport`].
    pub async fn bytes_limited(mut self, limit: u64) -> Result<Bytes, ReadError> {
        if self.content_length().is_some_and(|n| n > limit) {
            return Err(ReadError::TooLarge { limit });
        }
        let mut out = BytesMut::new();
        while let Some(chunk) = self.chunk().await.map_err(ReadError::Transport)? {
            if (out.len() + chunk.len()) as u64 > limit {
                return Err(ReadError::TooLarge { limit });
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out.freeze())
    }
}

impl Transport {
    /// A builder with the defaults.
    pub fn builder() -> TransportBuilder {
        TransportBuilder::default()
    }

    /// The insecure-host list.
    pub fn insecure(&self) -> &InsecureHosts {
        &self.inner.insecure
    }

    /// The address guard.
    pub fn guard(&self) -> &Guard {
        &self.inner.guard
    }

    /// The proxy configuration.
    pub fn proxy(&self) -> &ProxyConfig {
        &self.inner.proxy
    }

    /// Whether TLS certificates of `url`'s host are not verified.
    pub fn is_insecure(&self, url: &Url) -> bool {
        match (url.host_str(), url.port_or_known_default()) {
            (Some(h), Some(p)) => self.inner.insecure.matches(h, p),
            _ => false,
        }
    }

    /// The client for a hop: plain HTTP and insecure-listed HTTPS hosts
    /// use the client that verifies nothing (and so needs no trust roots);
    /// other HTTPS hosts the verifying client, built on first use.
    fn client_for(&self, url: &Url, strict: bool, label: &str) -> Result<&HttpClient, Error> {
        let clients = if strict {
            &self.inner.strict
        } else {
            &self.inner.normal
        };
        if url.scheme() != "https" || self.is_insecure(url) {
            return Ok(&clients.unverified);
        }
        if let Some(c) = clients.verified.get() {
            return Ok(c);
        }
        let config = self
            .inner
            .verifying
            .get_or_init(|| tls::verifying(self.inner.native_roots, &self.inner.extra_roots))
            .as_ref()
            .map_err(|e| Error::InvalidConfig {
                reason: format!("{label}: {e}"),
            })?;
        Ok(clients
            .verified
            .get_or_init(|| client(config, clients.connector.clone())))
    }

    /// Sends `req`, following redirects by the policy, and returns the first
    /// response that is not a followed redirect (any status).
    ///
    /// # Errors
    /// [`Error::Blocked`] for a refused address or redirect (https to http,
    /// not http(s), more than the redirect bound); [`Error::Transport`] for
    /// failures to connect or talk; [`Error::Status`] for a redirect without
    /// a usable `Location`.
    pub async fn send(&self, req: Request) -> Result<Response, Error> {
        let mut hop = req.url.clone();
        let mut method = req.method.clone();
        let mut headers = req.headers.clone();
        let mut body = req.body.clone();
        let mut redirects = 0usize;
        let mut strict = req.strict;
        loop {
            let shown = redact_url(hop.as_str());
            let label = req.label.clone().unwrap_or_else(|| shown.clone());
            let mut builder = http::Request::builder()
                .method(method.clone())
                .uri(request_uri(&hop, &label)?);
            if let Some(h) = builder.headers_mut() {
                h.clone_from(&headers);
                h.insert(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE));
                if hop.scheme() == "http"
                    && let Some(auth) = self.proxy_authorization(&hop)
                {
                    h.insert(http::header::PROXY_AUTHORIZATION, auth);
                }
            }
            let request = builder
                .body(Full::new(body.clone()))
                .map_err(|e| Error::InvalidUrl {
                    url: label.clone(),
                    reason: e.to_string(),
                })?;
            tracing::debug!(url = %shown, redirects, "request");
            let response = self
                .client_for(&hop, strict, &label)?
                .request(request)
                .await
                .map_err(|e| classify(&label, &e))?;
            let status = response.status();
            if matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308) {
                redirects += 1;
                if redirects > self.inner.max_redirects {
                    return Err(Error::Blocked {
                        url: req
                            .label
                            .clone()
                            .unwrap_or_else(|| redact_url(req.url.as_str())),
                        reason: format!("more than {} redirects", self.inner.max_redirects),
                    });
                }
                let next = next_hop(&hop, &label, status, response.headers().get(LOCATION))?;
                if next.origin() != hop.origin() {
                    // Credentials are for the origin they were given for.
                    headers.remove(AUTHORIZATION);
                }
                // A public server may not send us inwards: after a redirect
                // from a public address, loopback and private addresses are
                // refused for the rest of the chain.
                if response
                    .extensions()
                    .get::<Peer>()
                    .is_some_and(|p| is_public(p.0))
                {
                    strict = true;
                }
                if status == StatusCode::SEE_OTHER && method != Method::HEAD
                    || matches!(status.as_u16(), 301 | 302) && method == Method::POST
                {
                    method = Method::GET;
                    body = Bytes::new();
                    headers.remove(http::header::CONTENT_TYPE);
                }
                hop = next;
                continue;
            }
            let (parts, body) = response.into_parts();
            return Ok(Response {
                status: parts.status,
                headers: parts.headers,
                url: hop,
                body,
                label,
            });
        }
    }

    fn proxy_authorization(&self, url: &Url) -> Option<HeaderValue> {
        let proxy = self.inner.proxy.for_target(
            url.scheme(),
            url.host_str()?,
            url.port_or_known_default()?,
        )?;
        let mut v = HeaderValue::from_str(proxy.authorization.as_deref()?).ok()?;
        v.set_sensitive(true);
        Some(v)
    }
}

/// The request target of a hop: the URL without user-info and fragment.
fn request_uri(hop: &Url, label: &str) -> Result<Uri, Error> {
    let mut bare = hop.clone();
    let _ = bare.set_username("");
    let _ = bare.set_password(None);
    bare.set_fragment(None);
    bare.as_str().parse::<Uri>().map_err(|e| Error::InvalidUrl {
        url: label.to_owned(),
        reason: e.to_string(),
    })
}

/// Where a redirect leads, if it may be followed.
fn next_hop(
    hop: &Url,
    label: &str,
    status: StatusCode,
    location: Option<&HeaderValue>,
) -> Result<Url, Error> {
    let bad_location = || Error::Status {
        url: label.to_owned(),
        code: status.as_u16(),
    };
    let location = location
        .and_then(|v| v.to_str().ok())
        .ok_or_else(bad_location)?;
    let next = hop.join(location).map_err(|_| bad_location())?;
    let target = redact_url(next.as_str());
    match (hop.scheme(), next.scheme()) {
        ("https", "http") => Err(Error::Blocked {
            url: label.to_owned(),
            reason: format!("redirect from https down to http ({target}) is not allowed"),
        }),
        (_, "http" | "https") if next.host_str().is_some_and(|h| !h.is_empty()) => Ok(next),
        _ => Err(Error::Blocked {
            url: label.to_owned(),
            reason: format!("redirect to {target}, which is not an http(s) URL"),
        }),
    }
}

/// Drives the attempts of one operation: [`Backoff`] between them, never
/// sleeping past the deadline and never starting one after it.
///
/// ```
/// # use std::time::{Duration, Instant};
/// # use wasm_cache_core::retry::Backoff;
/// # use wasm_fetch_transport::RetryDriver;
/// let b = Backoff::default().with_max_attempts(2).with_initial(Duration::from_millis(1));
/// let mut retry = RetryDriver::new(b, Instant::now() + Duration::from_secs(5));
/// assert_eq!(retry.start(), 1);
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// assert!(retry.backoff().await);
/// # });
/// assert_eq!(retry.start(), 2);
/// ```
#[derive(Debug, Clone)]
pub struct RetryDriver {
    backoff: Backoff,
    deadline: Instant,
    attempt: u32,
}

impl RetryDriver {
    /// A driver for an operation that must be over by `deadline`.
    pub fn new(backoff: Backoff, deadline: Instant) -> Self {
        Self {
            backoff,
            deadline,
            attempt: 0,
        }
    }

    /// Starts the next attempt; returns its number (1-based).
    pub fn start(&mut self) -> u32 {
        self.attempt += 1;
        self.attempt
    }

    /// Attempts started so far.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// After a failed attempt: sleeps the backoff and returns true when
    /// another attempt is allowed and fits before the deadline; returns false
    /// (without sleeping) otherwise.
    pub async fn backoff(&mut self) -> bool {
        let remaining = self.deadline.saturating_duration_since(Instant::now());
        match self
            .backoff
            .delay_within(self.attempt, rand::random::<f64>(), remaining)
        {
            Some(d) => {
                tokio::time::sleep(d).await;
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_uri_drops_userinfo_and_fragment() {
        let url = Url::parse("https://u:p@h.example:8443/a/m.wasm?x=1#frag").unwrap();
        let uri = request_uri(&url, "shown").unwrap();
        assert_eq!(uri.to_string(), "https://h.example:8443/a/m.wasm?x=1");
    }

    #[test]
    fn redirect_rules() {
        let hop = Url::parse("https://a.example/m").unwrap();
        let loc = |s: &str| HeaderValue::from_str(s).unwrap();
        let next = next_hop(&hop, "x", StatusCode::FOUND, Some(&loc("/n"))).unwrap();
        assert_eq!(next.as_str(), "https://a.example/n");
        let e = next_hop(
            &hop,
            "x",
            StatusCode::FOUND,
            Some(&loc("http://b.example/?t=secret")),
        )
        .unwrap_err();
        assert!(matches!(e, Error::Blocked { .. }));
        assert!(!e.to_string().contains("secret"), "{e}");
        let e = next_hop(
            &hop,
            "x",
            StatusCode::FOUND,
            Some(&loc("file:///etc/passwd")),
        )
        .unwrap_err();
        assert!(e.to_string().contains("not an http(s) URL"), "{e}");
        let e = next_hop(&hop, "x", StatusCode::FOUND, None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "wasm module download request failed: status code 302"
        );
    }

    #[test]
    fn builder_validates() {
        let b = || {
            Transport::builder()
                .native_roots(false)
                .proxy(ProxyConfig::none())
        };
        let e = b().blocked_cidrs(["10.0.0.0/33"]).build().unwrap_err();
        assert!(e.to_string().contains("10.0.0.0/33"), "{e}");
        let e = b().ca_file("/nonexistent/ca.pem").build().unwrap_err();
        assert!(matches!(e, Error::InvalidConfig { .. }));
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
        let e = b().ca_pem(b"not a pem".to_vec()).build().unwrap_err();
        assert!(e.to_string().contains("no PEM certificate"), "{e}");
        let e = b().insecure_hosts(["http://h/"]).build().unwrap_err();
        assert!(e.to_string().contains("insecure host"), "{e}");
        let t = b()
            .blocked_cidrs(["192.0.2.1", "2001:db8::/32"])
            .insecure_hosts(["a.example:8443", "b.example"])
            .build()
            .unwrap();
        assert!(t.is_insecure(&Url::parse("https://a.example:8443/").unwrap()));
        assert!(!t.is_insecure(&Url::parse("https://a.example/").unwrap()));
        assert!(t.is_insecure(&Url::parse("https://b.example:1/").unwrap()));
        assert!(format!("{t:?}").contains("192.0.2.1/32"));
    }

    /// Issue 19: the system's trust roots are loaded once per process, and
    /// only by a request that verifies a certificate: building transports
    /// and plain-HTTP requests load none (the old code loaded them in every
    /// `build`, several times per OCI process).
    #[tokio::test]
    async fn system_roots_are_loaded_once_and_only_for_verified_https() {
        use std::sync::atomic::Ordering::SeqCst;
        let b = || Transport::builder().proxy(ProxyConfig::none());
        let (one, two) = (b().build().unwrap(), b().build().unwrap());
        assert_eq!(tls::NATIVE_LOADS.load(SeqCst), 0, "building loads no roots");
        // A plain-HTTP server on loopback, answering one request.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            let (mut c, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = c.read(&mut buf).await;
            let _ = c
                .write_all(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n")
                .await;
        });
        let url = Url::parse(&format!("http://{addr}/m.wasm")).unwrap();
        let r = one.send(Request::get(url)).await.unwrap();
        assert_eq!(r.status, StatusCode::NO_CONTENT);
        server.await.unwrap();
        // An insecure-listed HTTPS host verifies nothing: no roots either.
        let insecure = b().insecure_hosts(["127.0.0.1:1"]).build().unwrap();
        let url = Url::parse("https://127.0.0.1:1/m.wasm").unwrap();
        assert!(insecure.send(Request::get(url.clone())).await.is_err());
        assert_eq!(
            tls::NATIVE_LOADS.load(SeqCst),
            0,
            "plain HTTP loads no roots"
        );
        // Verified HTTPS (to a closed port: the client is set up first).
        assert!(one.send(Request::get(url.clone())).await.is_err());
        assert!(two.send(Request::get(url.clone())).await.is_err());
        assert!(one.send(Request::get(url)).await.is_err());
        assert_eq!(tls::NATIVE_LOADS.load(SeqCst), 1, "once per process");
    }

    #[test]
    fn retry_rule() {
        let tls = transport_error("u", FailureKind::Tls, "bad cert".into());
        assert!(!is_retryable(&tls));
        let plain = transport_error("u", FailureKind::HttpResponseToHttps, "x".into());
        assert!(!is_retryable(&plain));
        assert!(is_retryable(&transport_error(
            "u",
            FailureKind::Other,
            "reset".into()
        )));
        assert!(is_retryable(&Error::Status {
            url: "u".into(),
            code: 503
        }));
        assert!(!is_retryable(&Error::Status {
            url: "u".into(),
            code: 404
        }));
    }

    #[tokio::test]
    async fn retry_driver_respects_the_deadline() {
        let b = Backoff::default()
            .with_max_attempts(10)
            .with_initial(Duration::from_secs(30));
        let mut r = RetryDriver::new(b, Instant::now() + Duration::from_millis(100));
        r.start();
        // The next delay does not fit before the deadline: give up now.
        assert!(!r.backoff().await);
        let mut r = RetryDriver::new(
            Backoff::default().with_max_attempts(1),
            Instant::now() + Duration::from_secs(100),
        );
        r.start();
        assert!(!r.backoff().await);
    }
}
