//! # wasm-fetch-http
//!
//! The streaming HTTP(S) [`Fetcher`] of wasm-cache: `http://` and `https://`
//! module URLs, on hyper 1 (hyper-util's client) and rustls with the ring
//! provider.
//!
//! What it does, per fetch (the reference's behaviour, with its known
//! weaknesses fixed):
//!
//! - **Retries**: at most 5 attempts by default, exponential backoff with jitter
//!   ([`Backoff`], Istio's schedule), retrying transport errors and 5xx other
//!   than 501, 505 and 511, never 4xx. The backoff never sleeps past the
//!   request's deadline, and no attempt starts after it (an expired deadline is
//!   [`Error::Timeout`] without a request). Each attempt has its own timeout
//!   (default [`DEFAULT_ATTEMPT_TIMEOUT`]) covering connect, headers and body.
//!   The final error keeps the reference's wording:
//!   `wasm module download failed after 5 attempts, last error: wasm module
//!   download request failed: status code 500`. An attempt that already
//!   delivered module bytes to the sink is not retried (a sink cannot be
//!   rewound); one that failed before that is.
//! - **Streaming and unboxing**: the body goes chunk by chunk through
//!   [`wasm_cache_core::unbox::Unboxer`] into the caller's sink; gzip, tar and
//!   tar.gz bodies are unboxed on the fly (the first tar entry named
//!   `plugin.wasm` or starting with the Wasm magic). Memory does not grow with
//!   the module's size.
//! - **Size limit**: `req.max_size` bounds the unboxed module (and, with a
//!   small archive allowance, the body and the decompressed stream); exceeding
//!   it is [`Error::TooLarge`], never a truncation. A `Content-Length` that is
//!   already too large fails before the body is read; a missing or lying one is
//!   caught by counting.
//! - **Redirects**: followed up to [`DEFAULT_MAX_REDIRECTS`]; never from https
//!   down to http ([`Error::Blocked`]).
//! - **SSRF guard**: the connector resolves every hop's host itself, checks
//!   every resolved address and connects to exactly those addresses, so DNS
//!   rebinding between check and connect is impossible. Always refused:
//!   link-local and cloud metadata addresses (`169.254.0.0/16`, `fe80::/10`,
//!   `100.100.100.200`, `fd00:ec2::/32`, and their IPv4-mapped IPv6 forms);
//!   also refused: operator-configured CIDRs, and loopback or private ranges
//!   when switched off (both allowed by default). A host with any refused
//!   address is refused as a whole.
//! - **TLS**: webpki (Mozilla) roots plus the system's roots, plus optional
//!   extra CA bundles (PEM). Certificate verification is skipped only for hosts
//!   on the insecure list (`host:port`, a bare `host` for any port, or `*`),
//!   which use a separate client and connection pool. The rustls configuration
//!   is built with `rustls::crypto::ring::default_provider()` explicitly; the
//!   process-wide default provider is neither needed nor used.
//! - **Credentials**: user-info in the URL (`https://user:pass@host/...`) is sent
//!   as HTTP basic auth, to the URL's own origin only (a redirect to another
//!   origin does not carry it). URLs in errors and logs are always redacted:
//!   neither user-info nor query strings (signed URLs) appear.
//!
//! ## Proxies
//!
//! `HTTP_PROXY`, `HTTPS_PROXY`, `NO_PROXY` (and lower-case forms) are **not**
//! supported and are ignored: the fetcher always connects directly. The SSRF
//! guard works by checking the address it connects to; through a proxy, the
//! proxy resolves the name and picks the address, so the guard could not be
//! enforced. hyper-util reads these variables only through its
//! `client::proxy::Matcher` (feature `client-proxy`), which its legacy client
//! never calls on its own and this crate does not use; the connector here dials
//! the checked addresses directly. Explicit proxy support, with the guard's
//! limits spelt out, can be a future option.
//!
//! ## Example
//!
//! ```
//! use std::time::{Duration, Instant};
//! use wasm_cache_core::{FetchRequest, Fetcher, ModuleUrl};
//! use wasm_cache_testkit::http::{Route, ServerOptions, TestServer};
//! use wasm_cache_testkit::modules::{gzip, sample_module};
//! use wasm_fetch_http::HttpFetcher;
//!
//! let server = TestServer::start(ServerOptions::plain());
//! let module = sample_module(10_000, 1);
//! server.route("/m.wasm.gz", Route::bytes(gzip(&module)));
//!
//! let fetcher = HttpFetcher::builder().max_attempts(3).build()?;
//! let req = FetchRequest::new(
//!     ModuleUrl::parse(&server.url("/m.wasm.gz"))?,
//!     Instant::now() + Duration::from_secs(30),
//! );
//! let mut sink = Vec::new();
//! let fetched = tokio::runtime::Runtime::new()?.block_on(fetcher.fetch(&req, &mut sink))?;
//! assert_eq!(sink, module);
//! assert_eq!(fetched.size, module.len() as u64);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_LENGTH, LOCATION, USER_AGENT};
use http::{HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use ipnet::IpNet;
use url::Url;
use wasm_cache_core::retry::Backoff;
use wasm_cache_core::unbox::{TarEntryRule, Unboxer, boxed_limit};
use wasm_cache_core::{
    Error, FetchRequest, Fetched, Fetcher, ModuleSink, Scheme, Sha256Digest, Signatures, redact_url,
};

mod guard;
mod tls;

use crate::guard::{BlockedAddr, Guard, GuardedConnector};

/// The default timeout of one attempt (connect, headers and body): 15 s, Istio's.
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15);

/// The default bound on redirects followed in one attempt.
pub const DEFAULT_MAX_REDIRECTS: usize = 10;

const USER_AGENT_VALUE: &str = concat!("wasm-cache/", env!("CARGO_PKG_VERSION"));

type HttpClient = Client<HttpsConnector<GuardedConnector>, Empty<Bytes>>;

/// The HTTP(S) fetcher. Cheap to clone (clones share connection pools).
#[derive(Clone)]
pub struct HttpFetcher {
    inner: Arc<Inner>,
}

struct Inner {
    verified: HttpClient,
    /// For hosts on the insecure list (a separate pool, so a connection made
    /// without verification never serves a verified request).
    unverified: Option<HttpClient>,
    insecure_hosts: Vec<String>,
    backoff: Backoff,
    attempt_timeout: Duration,
    max_redirects: usize,
    guard: Arc<Guard>,
}

impl fmt::Debug for HttpFetcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.inner;
        f.debug_struct("HttpFetcher")
            .field("backoff", &i.backoff)
            .field("attempt_timeout", &i.attempt_timeout)
            .field("max_redirects", &i.max_redirects)
            .field("insecure_hosts", &i.insecure_hosts)
            .field("blocked_cidrs", &i.guard.blocked)
            .field("allow_private", &i.guard.allow_private)
            .field("allow_loopback", &i.guard.allow_loopback)
            .finish_non_exhaustive()
    }
}

/// Configures an [`HttpFetcher`]; start with [`HttpFetcher::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct HttpFetcherBuilder {
    backoff: Backoff,
    attempt_timeout: Duration,
    max_redirects: usize,
    insecure_hosts: Vec<String>,
    ca: Vec<CaSource>,
    native_roots: bool,
    blocked_cidrs: Vec<String>,
    allow_private: bool,
    allow_loopback: bool,
}

#[derive(Debug, Clone)]
enum CaSource {
    File(std::path::PathBuf),
    Pem(Vec<u8>),
}

impl Default for HttpFetcherBuilder {
    fn default() -> Self {
        Self {
            backoff: Backoff::default(),
            attempt_timeout: DEFAULT_ATTEMPT_TIMEOUT,
            max_redirects: DEFAULT_MAX_REDIRECTS,
            insecure_hosts: Vec::new(),
            ca: Vec::new(),
            native_roots: true,
            blocked_cidrs: Vec::new(),
            allow_private: true,
            allow_loopback: true,
        }
    }
}

impl HttpFetcherBuilder {
    /// Attempts in all, including the first (default 5). Overrides the
    /// `max_attempts` of a [`HttpFetcherBuilder::backoff`] set before.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.backoff.max_attempts = attempts;
        self
    }

    /// The retry schedule (default: Istio's, [`Backoff::default`]), including
    /// its `max_attempts`.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// The timeout of one attempt: connect, redirects, headers and the whole
    /// body (default [`DEFAULT_ATTEMPT_TIMEOUT`]). The request's deadline bounds
    /// it further.
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = timeout;
        self
    }

    /// How many redirects one attempt follows (default [`DEFAULT_MAX_REDIRECTS`]).
    pub fn max_redirects(mut self, redirects: usize) -> Self {
        self.max_redirects = redirects;
        self
    }

    /// Hosts whose TLS certificates are not verified: `host:port` (the port as
    /// the URL implies it, e.g. `example.com:443`), a bare `host` for any port,
    /// or `*` for every host. Adds to the list.
    pub fn insecure_hosts<I, S>(mut self, hosts: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.insecure_hosts
            .extend(hosts.into_iter().map(Into::into));
        self
    }

    /// Also trusts the CA certificates in this PEM file (read by
    /// [`HttpFetcherBuilder::build`]).
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

    /// Address ranges never to connect to, as CIDRs (`10.0.0.0/8`,
    /// `2001:db8::/32`) or single addresses. Adds to the list; checked by
    /// [`HttpFetcherBuilder::build`].
    pub fn blocked_cidrs<I, S>(mut self, cidrs: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.blocked_cidrs
            .extend(cidrs.into_iter().map(|s| s.as_ref().to_owned()));
        self
    }

    /// Whether private addresses (RFC 1918, `100.64.0.0/10`, `fc00::/7`) may be
    /// connected to (default true).
    pub fn allow_private(mut self, allow: bool) -> Self {
        self.allow_private = allow;
        self
    }

    /// Whether loopback addresses (`127.0.0.0/8`, `::1`, and the unspecified
    /// address, which reaches the local host) may be connected to (default true).
    pub fn allow_loopback(mut self, allow: bool) -> Self {
        self.allow_loopback = allow;
        self
    }

    /// Builds the fetcher.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for zero attempts or timeout, an unreadable or
    /// certificate-less CA file (naming the path), a CIDR that does not parse,
    /// or an empty insecure-host entry.
    pub fn build(self) -> Result<HttpFetcher, Error> {
        let invalid = |reason: String| Error::InvalidConfig { reason };
        if self.backoff.max_attempts == 0 {
            return Err(invalid("max_attempts must be at least 1".to_owned()));
        }
        if self.attempt_timeout.is_zero() {
            return Err(invalid("attempt_timeout must be more than zero".to_owned()));
        }
        if self.insecure_hosts.iter().any(|h| h.trim().is_empty()) {
            return Err(invalid("an insecure host entry is empty".to_owned()));
        }
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
            .collect::<Result<Vec<IpNet>, Error>>()?;
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
        let roots = tls::roots(self.native_roots, &bundles)?;
        let guard = Arc::new(Guard {
            blocked,
            allow_private: self.allow_private,
            allow_loopback: self.allow_loopback,
        });
        let connector = GuardedConnector {
            guard: guard.clone(),
            connect_timeout: self.attempt_timeout,
        };
        let verified = client(tls::verifying(roots)?, connector.clone());
        let unverified = if self.insecure_hosts.is_empty() {
            None
        } else {
            Some(client(tls::insecure()?, connector))
        };
        Ok(HttpFetcher {
            inner: Arc::new(Inner {
                verified,
                unverified,
                insecure_hosts: self.insecure_hosts,
                backoff: self.backoff,
                attempt_timeout: self.attempt_timeout,
                max_redirects: self.max_redirects,
                guard,
            }),
        })
    }
}

fn parse_cidr(s: &str) -> Option<IpNet> {
    let s = s.trim();
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(IpNet::from))
}

fn client(config: rustls::ClientConfig, connector: GuardedConnector) -> HttpClient {
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(connector);
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(https)
}

impl HttpFetcher {
    /// A builder with the defaults: 5 attempts on Istio's backoff schedule,
    /// 15 s per attempt, 10 redirects, webpki and system roots, no insecure
    /// hosts, loopback and private addresses allowed.
    pub fn builder() -> HttpFetcherBuilder {
        HttpFetcherBuilder::default()
    }

    /// A fetcher with the defaults.
    ///
    /// # Errors
    /// As [`HttpFetcherBuilder::build`] (the defaults do not fail).
    pub fn new() -> Result<Self, Error> {
        Self::builder().build()
    }

    fn is_insecure(&self, url: &Url) -> bool {
        let Some(host) = url.host_str() else {
            return false;
        };
        let port = url.port_or_known_default().unwrap_or(443);
        let host_port = format!("{host}:{port}");
        self.inner.insecure_hosts.iter().any(|entry| {
            let entry = entry.trim();
            entry == "*"
                || entry.eq_ignore_ascii_case(&host_port)
                || entry.eq_ignore_ascii_case(host)
        })
    }

    fn client_for(&self, url: &Url) -> &HttpClient {
        match &self.inner.unverified {
            Some(c) if url.scheme() == "https" && self.is_insecure(url) => c,
            _ => &self.inner.verified,
        }
    }

    /// One attempt bounded by the attempt timeout and the request's deadline.
    async fn attempt(
        &self,
        req: &FetchRequest,
        url: &Url,
        sink: &mut Counting<'_>,
        allowed: Duration,
    ) -> Result<u64, Error> {
        let until = (Instant::now() + self.inner.attempt_timeout).min(req.deadline);
        match tokio::time::timeout_at(until.into(), self.exchange(req, url, sink)).await {
            Ok(result) => result,
            Err(_) if until >= req.deadline => Err(req.timeout_error(allowed)),
            Err(_) => Err(Error::Transport {
                url: req.url.redacted(),
                reason: format!(
                    "the attempt timed out after {:?}",
                    self.inner.attempt_timeout
                ),
                source: None,
            }),
        }
    }

    /// Requests `url`, follows redirects, and streams the final body.
    async fn exchange(
        &self,
        req: &FetchRequest,
        url: &Url,
        sink: &mut Counting<'_>,
    ) -> Result<u64, Error> {
        let (shown, response) = self.open(req, url).await?;
        stream_body(req, &shown, response, sink).await
    }

    /// Requests `url` and follows redirects to a `200 OK` response; returns
    /// it with the redacted URL of the final hop.
    async fn open(
        &self,
        req: &FetchRequest,
        url: &Url,
    ) -> Result<(String, http::Response<hyper::body::Incoming>), Error> {
        let credentials = basic_auth(url);
        let mut hop = url.clone();
        let mut redirects = 0;
        loop {
            let shown = redact_url(hop.as_str());
            let mut request = Request::get(request_uri(&hop, &shown)?)
                .header(USER_AGENT, USER_AGENT_VALUE)
                .body(Empty::<Bytes>::new())
                .map_err(|e| Error::InvalidUrl {
                    url: shown.clone(),
                    reason: e.to_string(),
                })?;
            // The original URL's credentials go to its own origin only; a hop
            // may carry its own.
            let auth = basic_auth(&hop).or_else(|| {
                (hop.origin() == url.origin())
                    .then(|| credentials.clone())
                    .flatten()
            });
            if let Some(value) = auth {
                request.headers_mut().insert(AUTHORIZATION, value);
            }
            tracing::debug!(url = %shown, redirects, "wasm module request");
            let response = self
                .client_for(&hop)
                .request(request)
                .await
                .map_err(|e| classify(&shown, &e))?;
            let status = response.status();
            if matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308) {
                redirects += 1;
                if redirects > self.inner.max_redirects {
                    return Err(Error::Blocked {
                        url: req.url.redacted(),
                        reason: format!("more than {} redirects", self.inner.max_redirects),
                    });
                }
                hop = next_hop(&hop, &shown, status, response.headers().get(LOCATION))?;
                continue;
            }
            if status != StatusCode::OK {
                return Err(Error::Status {
                    url: shown,
                    code: status.as_u16(),
                });
            }
            return Ok((shown, response));
        }
    }

    /// Reads a detached signature from `url`, at most [`MAX_SIGNATURE_FILE`]
    /// bytes, within the attempt timeout and the request's deadline.
    async fn detached_signature(&self, req: &FetchRequest, url: &Url) -> Result<Signatures, Error> {
        let allowed = req.remaining(Instant::now());
        if allowed.is_zero() {
            return Err(req.timeout_error(Duration::ZERO));
        }
        let until = (Instant::now() + self.inner.attempt_timeout).min(req.deadline);
        let read = async {
            let (shown, response) = self.open(req, url).await?;
            let mut body = response.into_body();
            let mut text = Vec::new();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| Error::Transport {
                    url: shown.clone(),
                    reason: format!("reading the signature: {e}"),
                    source: None,
                })?;
                if let Ok(data) = frame.into_data() {
                    if text.len() + data.len() > MAX_SIGNATURE_FILE {
                        return Ok(Signatures::Missing(format!(
                            "the signature at {shown} is larger than {MAX_SIGNATURE_FILE} bytes"
                        )));
                    }
                    text.extend_from_slice(&data);
                }
            }
            Ok(match String::from_utf8(text) {
                Ok(text) => Signatures::Detached(text),
                Err(_) => Signatures::Missing(format!("the signature at {shown} is not text")),
            })
        };
        match tokio::time::timeout_at(until.into(), read).await {
            Ok(result) => result,
            Err(_) if until >= req.deadline => Err(req.timeout_error(allowed)),
            Err(_) => Err(Error::Transport {
                url: redact_url(url.as_str()),
                reason: format!(
                    "the signature request timed out after {:?}",
                    self.inner.attempt_timeout
                ),
                source: None,
            }),
        }
    }
}

/// The longest detached signature file read (cosign's base64 ECDSA
/// signature is about 100 bytes).
pub const MAX_SIGNATURE_FILE: usize = 4096;

/// Where a module's detached signature is: the request's signature URL, or
/// `<url>.sig` (the path gets the suffix; a query string stays as it is).
fn signature_url(req: &FetchRequest, module: &Url) -> Result<Url, Error> {
    if let Some(given) = &req.signature_url {
        return match (given.scheme(), given.http()) {
            (Scheme::Http | Scheme::Https, Some(u)) => Ok(u.clone()),
            _ => Err(Error::InvalidUrl {
                url: given.redacted(),
                reason: "a signature URL must be http:// or https://".to_owned(),
            }),
        };
    }
    let mut url = module.clone();
    let path = format!("{}.sig", module.path());
    url.set_path(&path);
    Ok(url)
}

/// The request target of a hop: the URL without user-info and fragment.
fn request_uri(hop: &Url, shown: &str) -> Result<Uri, Error> {
    let mut bare = hop.clone();
    let _ = bare.set_username("");
    let _ = bare.set_password(None);
    bare.set_fragment(None);
    bare.as_str().parse::<Uri>().map_err(|e| Error::InvalidUrl {
        url: shown.to_owned(),
        reason: e.to_string(),
    })
}

/// Where a redirect leads, if it may be followed.
fn next_hop(
    hop: &Url,
    shown: &str,
    status: StatusCode,
    location: Option<&HeaderValue>,
) -> Result<Url, Error> {
    let bad_location = || Error::Status {
        url: shown.to_owned(),
        code: status.as_u16(),
    };
    let location = location
        .and_then(|v| v.to_str().ok())
        .ok_or_else(bad_location)?;
    let next = hop.join(location).map_err(|_| bad_location())?;
    let target = redact_url(next.as_str());
    match (hop.scheme(), next.scheme()) {
        ("https", "http") => Err(Error::Blocked {
            url: shown.to_owned(),
            reason: format!("redirect from https down to http ({target}) is not allowed"),
        }),
        (_, "http" | "https") if next.host_str().is_some_and(|h| !h.is_empty()) => Ok(next),
        _ => Err(Error::Blocked {
            url: shown.to_owned(),
            reason: format!("redirect to {target}, which is not an http(s) URL"),
        }),
    }
}

/// `Authorization: Basic ...` from the URL's user-info, marked sensitive.
fn basic_auth(url: &Url) -> Option<HeaderValue> {
    use base64::Engine as _;
    if url.username().is_empty() && url.password().is_none() {
        return None;
    }
    let user = percent_decode(url.username());
    let pass = percent_decode(url.password().unwrap_or(""));
    let mut raw = user;
    raw.push(b':');
    raw.extend_from_slice(&pass);
    let token = base64::engine::general_purpose::STANDARD.encode(raw);
    let mut value = HeaderValue::from_str(&format!("Basic {token}")).ok()?;
    value.set_sensitive(true);
    Some(value)
}

fn percent_decode(s: &str) -> Vec<u8> {
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

/// Maps a client error: the SSRF guard's refusal is [`Error::Blocked`],
/// anything else [`Error::Transport`] with the cause chain as the reason.
fn classify(shown: &str, e: &hyper_util::client::legacy::Error) -> Error {
    let mut reasons = Vec::new();
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(blocked) = c.downcast_ref::<BlockedAddr>() {
            return Error::Blocked {
                url: shown.to_owned(),
                reason: blocked.to_string(),
            };
        }
        let text = c.to_string();
        if reasons.last() != Some(&text) {
            reasons.push(text);
        }
        cause = c.source();
    }
    Error::Transport {
        url: shown.to_owned(),
        reason: reasons.join(": "),
        source: None,
    }
}

async fn stream_body(
    req: &FetchRequest,
    shown: &str,
    response: http::Response<hyper::body::Incoming>,
    sink: &mut Counting<'_>,
) -> Result<u64, Error> {
    let declared = response
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > boxed_limit(req.max_size)) {
        return Err(Error::TooLarge {
            url: req.url.redacted(),
            limit: req.max_size,
        });
    }
    let mut unboxer = Unboxer::new(sink, req.max_size, TarEntryRule::PluginWasmOrFirstWasm);
    unboxer.announce_len(declared);
    let mut body = response.into_body();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            let mut reason = format!("reading the body: {e}");
            if let Some(s) = std::error::Error::source(&e) {
                reason.push_str(&format!(": {s}"));
            }
            Error::Transport {
                url: shown.to_owned(),
                reason,
                source: None,
            }
        })?;
        if let Ok(data) = frame.into_data() {
            unboxer.push(&data).map_err(|e| e.into_error(&req.url))?;
        }
    }
    let (_, size) = unboxer.finish().map_err(|e| e.into_error(&req.url))?;
    Ok(size)
}

/// Counts what reaches the caller's sink, to know whether a retry is possible.
struct Counting<'a> {
    inner: &'a mut dyn ModuleSink,
    written: u64,
}

impl ModuleSink for Counting<'_> {
    fn write(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        self.inner.write(chunk)?;
        self.written += chunk.len() as u64;
        Ok(())
    }
    fn size_hint(&mut self, len: u64) {
        self.inner.size_hint(len);
    }
}

/// Wraps the failure of the last attempt the way the reference reports it.
fn after_attempts(attempts: u32, e: Error) -> Error {
    match e {
        Error::Status { .. } | Error::Transport { .. } => Error::DownloadFailed {
            attempts,
            last: Box::new(e),
        },
        other => other,
    }
}

fn http_url(req: &FetchRequest) -> Result<&Url, Error> {
    match req.url.scheme() {
        Scheme::Http | Scheme::Https => req.url.http().ok_or_else(|| Error::InvalidUrl {
            url: req.url.redacted(),
            reason: "not an http(s) URL".to_owned(),
        }),
        other => Err(Error::UnsupportedScheme {
            scheme: other.as_str().to_owned(),
        }),
    }
}

#[async_trait]
impl Fetcher for HttpFetcher {
    /// HTTP(S) sources are not content-addressed: always `Ok(None)`, without a
    /// request.
    async fn resolve(&self, req: &FetchRequest) -> Result<Option<Sha256Digest>, Error> {
        http_url(req)?;
        Ok(None)
    }

    async fn fetch(&self, req: &FetchRequest, sink: &mut dyn ModuleSink) -> Result<Fetched, Error> {
        let url = http_url(req)?;
        let start = Instant::now();
        let allowed = req.remaining(start);
        if allowed.is_zero() {
            return Err(req.timeout_error(Duration::ZERO));
        }
        let backoff = self.inner.backoff;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let mut counting = Counting {
                inner: &mut *sink,
                written: 0,
            };
            let error = match self.attempt(req, url, &mut counting, allowed).await {
                Ok(size) => return Ok(Fetched::new(size, None)),
                Err(e) => e,
            };
            let delivered = counting.written > 0;
            if matches!(error, Error::Timeout { .. }) || !error.is_retryable() || delivered {
                return Err(after_attempts(attempt, error));
            }
            let delay = backoff.delay_within(
                attempt,
                rand::random::<f64>(),
                req.remaining(Instant::now()),
            );
            let Some(delay) = delay else {
                return Err(after_attempts(attempt, error));
            };
            tracing::debug!(url = %req.url, attempt, ?delay, error = %error, "retrying wasm module download");
            tokio::time::sleep(delay).await;
        }
    }

    /// A detached `cosign sign-blob` signature (base64 text) from
    /// `<url>.sig` or the request's signature URL, through the same guarded
    /// client, redirect rules and deadline; a 404 is
    /// [`Error::Status`] (the cache reports it as a missing signature).
    async fn signatures(
        &self,
        req: &FetchRequest,
        _digest: &Sha256Digest,
    ) -> Result<Signatures, Error> {
        let url = signature_url(req, http_url(req)?)?;
        self.detached_signature(req, &url).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_auth_decodes_userinfo() {
        let url = Url::parse("https://us%40er:p%3Ass@h.example/m.wasm").unwrap();
        let v = basic_auth(&url).unwrap();
        assert!(v.is_sensitive());
        // base64("us@er:p:ss")
        assert_eq!(v.to_str().unwrap(), "Basic dXNAZXI6cDpzcw==");
        assert!(basic_auth(&Url::parse("https://h.example/").unwrap()).is_none());
        assert_eq!(percent_decode("a%2"), b"a%2");
    }

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
        let e = HttpFetcher::builder().max_attempts(0).build().unwrap_err();
        assert!(e.to_string().contains("max_attempts"), "{e}");
        let e = HttpFetcher::builder()
            .blocked_cidrs(["10.0.0.0/33"])
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("10.0.0.0/33"), "{e}");
        let e = HttpFetcher::builder()
            .ca_file("/nonexistent/ca.pem")
            .native_roots(false)
            .build()
            .unwrap_err();
        assert!(matches!(e, Error::InvalidConfig { .. }));
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
        let e = HttpFetcher::builder()
            .ca_pem(b"not a pem".to_vec())
            .native_roots(false)
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("no PEM certificate"), "{e}");
        let f = HttpFetcher::builder()
            .blocked_cidrs(["192.0.2.1", "2001:db8::/32"])
            .insecure_hosts(["a.example:8443", "b.example"])
            .native_roots(false)
            .build()
            .unwrap();
        assert!(f.is_insecure(&Url::parse("https://a.example:8443/").unwrap()));
        assert!(!f.is_insecure(&Url::parse("https://a.example/").unwrap()));
        assert!(f.is_insecure(&Url::parse("https://b.example:1/").unwrap()));
        assert!(format!("{f:?}").contains("192.0.2.1/32"));
    }
}
