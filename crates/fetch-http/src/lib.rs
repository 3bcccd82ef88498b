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
//!   [`wasm_cache_unbox::Unboxer`] into the caller's sink; gzip, tar and
//!   tar.gz bodies are unboxed on the fly (the first tar entry named
//!   `plugin.wasm` or starting with the Wasm magic). Memory does not grow with
//!   the module's size.
//! - **Size limit**: `req.max_size` bounds the unboxed module (and, with a
//!   small archive allowance, the body and the decompressed stream); exceeding
//!   it is [`Error::TooLarge`], never a truncation. A `Content-Length` that is
//!   already too large fails before the body is read; a missing or lying one is
//!   caught by counting.
//! - **Transport**: every request goes through [`wasm_fetch_transport`], the
//!   one guarded transport of wasm-cache: the address guard in the connector
//!   (every connection's resolved address is checked; link-local and
//!   metadata addresses in every IPv6 form are refused, operator CIDRs too),
//!   redirects (at most [`DEFAULT_MAX_REDIRECTS`], each hop guarded, never
//!   https to http, `Authorization` only to the original origin), TLS on
//!   ring with webpki + system roots + extra CA bundles, the insecure-host
//!   list (`host:port`, `host` for any port, or `*`; the same meaning as for
//!   OCI registries), and `HTTP_PROXY` / `HTTPS_PROXY` / `NO_PROXY`.
//! - **Credentials**: user-info in the URL (`https://user:pass@host/...`) is sent
//!   as HTTP basic auth, to the URL's own origin only (a redirect to another
//!   origin does not carry it). URLs in errors and logs are always redacted:
//!   neither user-info nor query strings (signed URLs) appear.
//!
//! ## Example
//!
//! ```
//! use std::time::{Duration, Instant};
//! use wasm_fetch_http::{FetchRequest, Fetcher, HttpFetcher, ModuleUrl};
//!
//! # use std::io::{Read as _, Write as _};
//! # // A one-shot HTTP server on loopback (hidden; standard library only).
//! # let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
//! # let url = format!("http://{}/m.wasm", listener.local_addr()?);
//! # std::thread::spawn(move || {
//! #     let (mut conn, _) = listener.accept().unwrap();
//! #     let mut request = [0u8; 4096];
//! #     let _ = conn.read(&mut request);
//! #     let body = b"\0asm\x01\0\0\0";
//! #     let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len());
//! #     conn.write_all(head.as_bytes()).and_then(|()| conn.write_all(body)).unwrap();
//! # });
//! let fetcher = HttpFetcher::builder().max_attempts(3).build()?;
//! let req = FetchRequest::new(ModuleUrl::parse(&url)?, Instant::now() + Duration::from_secs(30));
//! let mut sink = Vec::new();
//! let fetched = tokio::runtime::Runtime::new()?.block_on(fetcher.fetch(&req, &mut sink))?;
//! assert_eq!(sink, b"\0asm\x01\0\0\0");
//! assert_eq!(fetched.size, 8);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use http::StatusCode;
use http::header::AUTHORIZATION;
use url::Url;
use wasm_cache_core::{Scheme, Signatures, redact_url};
use wasm_cache_unbox::{TarEntryRule, Unboxer, boxed_limit};
use wasm_fetch_transport::{
    ProxyConfig, ReadError, Request, RetryDriver, Transport, TransportBuilder,
};

/// The core types this crate's API uses, so that using the fetcher alone needs
/// no direct dependency on `wasm-cache-core`.
pub use wasm_cache_core::retry::Backoff;
pub use wasm_cache_core::{
    Error, ErrorKind, FetchRequest, Fetched, Fetcher, ModuleSink, ModuleUrl, PullSecret,
    Sha256Digest,
};
pub use wasm_fetch_transport::DEFAULT_MAX_REDIRECTS;

/// The default timeout of one attempt (connect, headers and body): 15 s, Istio's.
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15);

/// The HTTP(S) fetcher. Cheap to clone (clones share connection pools).
#[derive(Clone)]
pub struct HttpFetcher {
    inner: Arc<Inner>,
}

struct Inner {
    transport: Transport,
    backoff: Backoff,
    attempt_timeout: Duration,
}

impl fmt::Debug for HttpFetcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.inner;
        f.debug_struct("HttpFetcher")
            .field("backoff", &i.backoff)
            .field("attempt_timeout", &i.attempt_timeout)
            .field("transport", &i.transport)
            .finish_non_exhaustive()
    }
}

/// Configures an [`HttpFetcher`]; start with [`HttpFetcher::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct HttpFetcherBuilder {
    backoff: Backoff,
    attempt_timeout: Duration,
    transport: TransportBuilder,
}

impl Default for HttpFetcherBuilder {
    fn default() -> Self {
        Self {
            backoff: Backoff::default(),
            attempt_timeout: DEFAULT_ATTEMPT_TIMEOUT,
            transport: Transport::builder(),
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
        self.transport = self.transport.max_redirects(redirects);
        self
    }

    /// Hosts whose TLS certificates are not verified: `host:port` (the port as
    /// the URL implies it, e.g. `example.com:443`), a bare `host` for any port,
    /// or `*` for every host ([`wasm_fetch_transport::InsecureHosts`]). Adds to
    /// the list.
    pub fn insecure_hosts<I, S>(mut self, hosts: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.transport = self.transport.insecure_hosts(hosts);
        self
    }

    /// Also trusts the CA certificates in this PEM file (read once, by
    /// [`HttpFetcherBuilder::build`]).
    pub fn ca_file(mut self, path: impl AsRef<Path>) -> Self {
        self.transport = self.transport.ca_file(path);
        self
    }

    /// Also trusts the CA certificates in these PEM bytes.
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.transport = self.transport.ca_pem(pem);
        self
    }

    /// Whether the system's root certificates are trusted besides webpki's
    /// (default true; unreadable system stores are skipped).
    pub fn native_roots(mut self, enabled: bool) -> Self {
        self.transport = self.transport.native_roots(enabled);
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
        self.transport = self.transport.blocked_cidrs(cidrs);
        self
    }

    /// Whether private addresses (RFC 1918, `100.64.0.0/10`, `fc00::/7`) may be
    /// connected to (default true).
    pub fn allow_private(mut self, allow: bool) -> Self {
        self.transport = self.transport.allow_private(allow);
        self
    }

    /// Whether loopback addresses (`127.0.0.0/8`, `::1`, and the unspecified
    /// address, which reaches the local host) may be connected to (default true).
    pub fn allow_loopback(mut self, allow: bool) -> Self {
        self.transport = self.transport.allow_loopback(allow);
        self
    }

    /// The proxy configuration (default: `HTTP_PROXY`, `HTTPS_PROXY` and
    /// `NO_PROXY` from the environment).
    pub fn proxy(mut self, proxy: ProxyConfig) -> Self {
        self.transport = self.transport.proxy(proxy);
        self
    }

    /// Checks the options as [`build`](Self::build) would, building nothing
    /// (see [`TransportBuilder::check`]): a caller that builds the fetcher on
    /// first use can report a bad option at once.
    ///
    /// # Errors
    /// As [`build`](Self::build).
    pub fn check(&self) -> Result<(), Error> {
        self.check_own()?;
        self.transport
            .clone()
            .connect_timeout(self.attempt_timeout)
            .check()
    }

    fn check_own(&self) -> Result<(), Error> {
        let invalid = |reason: String| Error::InvalidConfig { reason };
        if self.backoff.max_attempts == 0 {
            return Err(invalid("max_attempts must be at least 1".to_owned()));
        }
        if self.attempt_timeout.is_zero() {
            return Err(invalid("attempt_timeout must be more than zero".to_owned()));
        }
        Ok(())
    }

    /// Builds the fetcher. Loads no trust roots: the system's are loaded once
    /// per process, by the first HTTPS request that verifies a certificate.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for zero attempts or timeout, an unreadable or
    /// certificate-less CA file (naming the path), a CIDR that does not parse,
    /// an insecure-host entry that is empty or not `host[:port]`/`*`, or a
    /// proxy variable that is not a usable proxy URL.
    pub fn build(self) -> Result<HttpFetcher, Error> {
        self.check_own()?;
        let transport = self
            .transport
            .connect_timeout(self.attempt_timeout)
            .build()?;
        Ok(HttpFetcher {
            inner: Arc::new(Inner {
                transport,
                backoff: self.backoff,
                attempt_timeout: self.attempt_timeout,
            }),
        })
    }
}

impl HttpFetcher {
    /// A builder with the defaults.
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

    /// Requests `url` (the transport follows redirects) and streams the body.
    async fn exchange(
        &self,
        req: &FetchRequest,
        url: &Url,
        sink: &mut Counting<'_>,
    ) -> Result<u64, Error> {
        let mut request = Request::get(url.clone());
        if let Some(value) = wasm_fetch_transport::basic_auth(url) {
            // The transport drops it on a redirect to another origin.
            request = request.header(AUTHORIZATION, value);
        }
        let mut response = self.inner.transport.send(request).await?;
        if response.status != StatusCode::OK {
            return Err(Error::Status {
                url: response.label().to_owned(),
                code: response.status.as_u16(),
            });
        }
        if response
            .content_length()
            .is_some_and(|n| n > boxed_limit(req.max_size))
        {
            return Err(Error::TooLarge {
                url: req.url.redacted(),
                limit: req.max_size,
            });
        }
        let mut unboxer = Unboxer::new(sink, req.max_size, TarEntryRule::PluginWasmOrFirstWasm);
        unboxer.announce_len(response.content_length());
        while let Some(data) = response.chunk().await? {
            unboxer.push(&data).map_err(|e| e.into_error(&req.url))?;
        }
        let (_, size) = unboxer.finish().map_err(|e| e.into_error(&req.url))?;
        Ok(size)
    }
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
        let mut retry = RetryDriver::new(self.inner.backoff, req.deadline);
        loop {
            let attempt = retry.start();
            let mut counting = Counting {
                inner: &mut *sink,
                written: 0,
            };
            let error = match self.attempt(req, url, &mut counting, allowed).await {
                Ok(size) => return Ok(Fetched::new(size, None)),
                Err(e) => e,
            };
            let delivered = counting.written > 0;
            if matches!(error, Error::Timeout { .. })
                || !wasm_fetch_transport::is_retryable(&error)
                || delivered
            {
                return Err(after_attempts(attempt, error));
            }
            tracing::debug!(url = %req.url, attempt, error = %error, "retrying wasm module download");
            if !retry.backoff().await {
                return Err(after_attempts(attempt, error));
            }
        }
    }

    /// A detached `cosign sign-blob` signature (base64 text) from
    /// `<url>.sig` or the request's signature URL, through the same guarded
    /// transport (address guard, TLS, redirects), at most
    /// [`MAX_SIGNATURE_FILE`] bytes, within the attempt timeout and the
    /// deadline. A 404 is [`Error::Status`] (the cache reports it as a
    /// missing signature).
    async fn signatures(
        &self,
        req: &FetchRequest,
        _digest: &Sha256Digest,
    ) -> Result<Signatures, Error> {
        let url = signature_url(req, http_url(req)?)?;
        let allowed = req.remaining(Instant::now());
        if allowed.is_zero() {
            return Err(req.timeout_error(Duration::ZERO));
        }
        let label = redact_url(url.as_str());
        let until = (Instant::now() + self.inner.attempt_timeout).min(req.deadline);
        let read = async {
            let mut request = Request::get(url.clone());
            if let Some(value) = wasm_fetch_transport::basic_auth(&url) {
                // The transport drops it on a redirect to another origin.
                request = request.header(AUTHORIZATION, value);
            }
            let response = self.inner.transport.send(request).await?;
            if response.status != StatusCode::OK {
                return Err(Error::Status {
                    url: response.label().to_owned(),
                    code: response.status.as_u16(),
                });
            }
            Ok(match response.bytes_limited(MAX_SIGNATURE_FILE).await {
                Ok(body) => match String::from_utf8(body.to_vec()) {
                    Ok(text) => Signatures::Detached(text),
                    Err(_) => Signatures::Missing(format!("the signature at {label} is not text")),
                },
                Err(ReadError::TooLarge { limit }) => Signatures::Missing(format!(
                    "the signature at {label} is larger than {limit} bytes"
                )),
                Err(ReadError::Transport(e)) => return Err(e),
            })
        };
        match tokio::time::timeout_at(until.into(), read).await {
            Ok(result) => result,
            Err(_) if until >= req.deadline => Err(req.timeout_error(allowed)),
            Err(_) => Err(Error::Transport {
                url: label,
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
pub const MAX_SIGNATURE_FILE: u64 = 4096;

/// Where a module's detached signature is: the request's signature URL, or
/// `<url>.sig` (the path gets the suffix; a query string stays as it is).
fn signature_url(req: &FetchRequest, module: &Url) -> Result<Url, Error> {
    if let Some(given) = &req.signature_url {
        return match given.http() {
            Some(u) if matches!(given.scheme(), Scheme::Http | Scheme::Https) => Ok(u.clone()),
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

#[cfg(test)]
mod tests {
    use super::*;

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
        let f = HttpFetcher::builder()
            .blocked_cidrs(["192.0.2.1", "2001:db8::/32"])
            .insecure_hosts(["a.example:8443", "b.example"])
            .native_roots(false)
            .proxy(ProxyConfig::none())
            .build()
            .unwrap();
        assert!(format!("{f:?}").contains("192.0.2.1/32"));
    }
}
