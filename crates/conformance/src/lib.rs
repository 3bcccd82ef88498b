//! # wasm-cache-conformance
//!
//! Two things every [`Fetcher`] author needs:
//!
//! - [`MemoryFetcher`], an in-memory fetcher with request counters and fault
//!   injection, for tests of code that sits above the `Fetcher` trait;
//! - the conformance checks: `pub async fn`s that prove a fetcher honours the
//!   trait's contract (exact bytes, streaming into the sink, size limit, expired
//!   deadline, sink errors, foreign schemes, resolve/fetch agreement, a wrong
//!   pinned digest refused, no secret in any error, a digest handed to the
//!   sink being the module's). Every
//!   backend of this workspace runs them, and a third-party fetcher can too.
//!
//! This crate lives beside `wasm-cache-core` rather than inside it because it
//! reads the monotonic clock (deadlines); the core reads none.
//!
//! ```
//! use wasm_cache_conformance::{Fixture, MemoryFetcher, run_all};
//! use wasm_cache_core::{ModuleUrl, Scheme};
//!
//! # tokio_test_block_on(async {
//! let fetcher = MemoryFetcher::for_schemes(&[Scheme::Http, Scheme::Https]);
//! let module = b"\0asm\x01\0\0\0 a tiny module".to_vec();
//! fetcher.insert("https://example.com/m.wasm", module.clone(), None);
//! let fixture = Fixture::new(ModuleUrl::parse("https://example.com/m.wasm")?, module);
//! run_all(&fetcher, &fixture).await?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
//! # }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use wasm_cache_core::{
    Error, ErrorKind, FetchRequest, Fetched, Fetcher, ModuleSink, ModuleUrl, Scheme, Sha256Digest,
};

/// The size of the chunks [`MemoryFetcher`] writes, to exercise streaming sinks.
pub const MEMORY_CHUNK: usize = 16 * 1024;

/// A failure [`MemoryFetcher`] can be told to produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// Answer with this HTTP status.
    Status(u16),
    /// Fail as if the connection were reset.
    Transport,
    /// Write half of the module, then fail as if the connection were reset.
    TruncateBody,
}

#[derive(Clone)]
struct Entry {
    body: Arc<[u8]>,
    digest: Option<Sha256Digest>,
}

/// An in-memory [`Fetcher`] serving modules registered by URL.
///
/// For `oci://` URLs register the digest that `resolve` reports (the "manifest
/// digest"); `fetch` with a request digest serves only a module registered under
/// that digest. Counters and [`Fault`]s make it a test double for code above
/// the trait; it honours the whole `Fetcher` contract (it runs the conformance
/// checks itself).
#[derive(Default)]
pub struct MemoryFetcher {
    modules: Mutex<HashMap<String, Entry>>,
    faults: Mutex<HashMap<String, (Fault, usize)>>,
    fetches: AtomicUsize,
    resolves: AtomicUsize,
    delay: Mutex<Option<Duration>>,
    schemes: Option<Vec<Scheme>>,
}

impl fmt::Debug for MemoryFetcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryFetcher")
            .field("modules", &lock(&self.modules).len())
            .field("fetches", &self.fetch_count())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl MemoryFetcher {
    /// An empty fetcher that serves every scheme.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty fetcher that serves only these schemes and refuses others with
    /// [`Error::UnsupportedScheme`], like a real backend.
    pub fn for_schemes(schemes: &[Scheme]) -> Self {
        Self {
            schemes: Some(schemes.to_vec()),
            ..Self::default()
        }
    }

    /// Serves `body` at `url` (the URL as given to the cache); `digest` is what
    /// `resolve` reports (use `Some` for `oci://` URLs).
    pub fn insert(&self, url: &str, body: impl Into<Arc<[u8]>>, digest: Option<Sha256Digest>) {
        lock(&self.modules).insert(
            url.to_owned(),
            Entry {
                body: body.into(),
                digest,
            },
        );
    }

    /// Stops serving `url`.
    pub fn remove(&self, url: &str) {
        lock(&self.modules).remove(url);
    }

    /// Makes the next `times` requests for `url` fail with `fault`.
    pub fn inject(&self, url: &str, fault: Fault, times: usize) {
        lock(&self.faults).insert(url.to_owned(), (fault, times));
    }

    /// Makes every `fetch` wait this long before writing (to hold a fetch open).
    pub fn set_delay(&self, delay: Option<Duration>) {
        *lock(&self.delay) = delay;
    }

    /// How many times `fetch` was called.
    pub fn fetch_count(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    /// How many times `resolve` was called.
    pub fn resolve_count(&self) -> usize {
        self.resolves.load(Ordering::SeqCst)
    }

    fn take_fault(&self, url: &str) -> Option<Fault> {
        let mut faults = lock(&self.faults);
        let (fault, left) = faults.get_mut(url)?;
        let fault = *fault;
        *left -= 1;
        if *left == 0 {
            faults.remove(url);
        }
        Some(fault)
    }

    fn check(&self, req: &FetchRequest) -> Result<Entry, Error> {
        let url = req.url.redacted();
        let scheme = req.url.scheme();
        if self.schemes.as_ref().is_some_and(|s| !s.contains(&scheme)) {
            return Err(Error::UnsupportedScheme {
                scheme: scheme.as_str().to_owned(),
            });
        }
        if req.remaining(Instant::now()).is_zero() {
            return Err(req.timeout_error(Duration::ZERO));
        }
        match self.take_fault(req.url.as_str()) {
            Some(Fault::Status(code)) => return Err(Error::Status { url, code }),
            Some(Fault::Transport) => {
                return Err(Error::Transport {
                    url,
                    reason: "connection reset (injected)".into(),
                    source: None,
                });
            }
            Some(Fault::TruncateBody) | None => {}
        }
        lock(&self.modules)
            .get(req.url.as_str())
            .cloned()
            .ok_or(Error::NotFound { url })
    }
}

#[async_trait]
impl Fetcher for MemoryFetcher {
    async fn resolve(&self, req: &FetchRequest) -> Result<Option<Sha256Digest>, Error> {
        self.resolves.fetch_add(1, Ordering::SeqCst);
        Ok(self.check(req)?.digest)
    }

    async fn fetch(&self, req: &FetchRequest, sink: &mut dyn ModuleSink) -> Result<Fetched, Error> {
        self.fetches.fetch_add(1, Ordering::SeqCst);
        let truncate = lock(&self.faults)
            .get(req.url.as_str())
            .is_some_and(|(f, _)| *f == Fault::TruncateBody);
        let entry = self.check(req)?;
        let url = req.url.redacted();
        if let (Some(want), Some(have)) = (req.digest, entry.digest)
            && want != have
        {
            return Err(Error::NotFound {
                url: format!("{url}@{}", want.to_prefixed()),
            });
        }
        let delay = *lock(&self.delay);
        if let Some(d) = delay {
            // A plain thread sleep would block the runtime; this fetcher is for
            // tests, so a cooperative wait loop that honours the deadline is enough.
            let until = Instant::now() + d;
            while Instant::now() < until {
                if req.remaining(Instant::now()).is_zero() {
                    return Err(req.timeout_error(d));
                }
                yield_now().await;
            }
        }
        let body: &[u8] = if truncate {
            &entry.body[..entry.body.len() / 2]
        } else {
            &entry.body
        };
        let mut written = 0u64;
        for chunk in body.chunks(MEMORY_CHUNK) {
            if written + chunk.len() as u64 > req.max_size {
                return Err(Error::TooLarge {
                    url,
                    limit: req.max_size,
                });
            }
            sink.write(chunk).map_err(|source| Error::Sink {
                url: url.clone(),
                source,
            })?;
            written += chunk.len() as u64;
        }
        if truncate {
            return Err(Error::Transport {
                url,
                reason: "connection reset mid-body (injected)".into(),
                source: None,
            });
        }
        Ok(Fetched::new(written, entry.digest))
    }
}

/// Yields once to the executor, without depending on a particular runtime.
async fn yield_now() {
    struct YieldNow(bool);
    impl std::future::Future for YieldNow {
        type Output = ();
        fn poll(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<()> {
            if self.0 {
                std::task::Poll::Ready(())
            } else {
                self.0 = true;
                cx.waker().wake_by_ref();
                std::task::Poll::Pending
            }
        }
    }
    YieldNow(false).await;
}

/// What a conformance check needs: a URL the fetcher serves and the exact
/// unboxed module bytes it must produce.
#[derive(Debug, Clone)]
pub struct Fixture {
    /// A URL the fetcher under test serves.
    pub url: ModuleUrl,
    /// The module bytes `fetch` must write (after unboxing).
    pub module: Vec<u8>,
    /// The digest `resolve` must report, for content-addressed sources.
    pub digest: Option<Sha256Digest>,
    /// Time allowed for each operation.
    pub timeout: Duration,
}

impl Fixture {
    /// A fixture for a source that is not content-addressed.
    pub fn new(url: ModuleUrl, module: Vec<u8>) -> Self {
        Self {
            url,
            module,
            digest: None,
            timeout: Duration::from_secs(30),
        }
    }

    /// Sets the digest `resolve` must report.
    #[must_use]
    pub fn with_digest(mut self, digest: Sha256Digest) -> Self {
        self.digest = Some(digest);
        self
    }

    fn request(&self) -> FetchRequest {
        FetchRequest::new(self.url.clone(), Instant::now() + self.timeout)
    }
}

/// A failed conformance check: which rule, and what happened instead.
#[derive(Debug)]
pub struct Violation {
    /// The check's name.
    pub check: &'static str,
    /// What was seen.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "fetcher conformance check {} failed: {}",
            self.check, self.detail
        )
    }
}

impl std::error::Error for Violation {}

fn violation(check: &'static str, detail: impl Into<String>) -> Violation {
    Violation {
        check,
        detail: detail.into(),
    }
}

/// A sink that records chunk sizes, to prove the fetcher streams.
#[derive(Default)]
struct CountingSink {
    bytes: Vec<u8>,
    chunks: usize,
    largest: usize,
}

impl ModuleSink for CountingSink {
    fn write(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        self.bytes.extend_from_slice(chunk);
        self.chunks += 1;
        self.largest = self.largest.max(chunk.len());
        Ok(())
    }
}

/// The largest single chunk a streaming fetcher may hand the sink.
pub const MAX_CHUNK: usize = 1024 * 1024;

/// `fetch` writes exactly the fixture's bytes, in chunks of at most
/// [`MAX_CHUNK`] bytes, and reports their size (and digest, when content-addressed).
///
/// # Errors
/// A [`Violation`] describing the difference.
pub async fn fetch_writes_exact_bytes(f: &dyn Fetcher, fx: &Fixture) -> Result<(), Violation> {
    const CHECK: &str = "fetch_writes_exact_bytes";
    let mut sink = CountingSink::default();
    let req = fx.request().with_digest(fx.digest);
    let got = f
        .fetch(&req, &mut sink)
        .await
        .map_err(|e| violation(CHECK, format!("fetch failed: {e}")))?;
    if sink.bytes != fx.module {
        return Err(violation(
            CHECK,
            format!(
                "wrote {} bytes, expected {}",
                sink.bytes.len(),
                fx.module.len()
            ),
        ));
    }
    if got.size != fx.module.len() as u64 {
        return Err(violation(CHECK, format!("reported size {}", got.size)));
    }
    if sink.largest > MAX_CHUNK {
        return Err(violation(
            CHECK,
            format!(
                "a chunk of {} bytes: the fetcher buffers instead of streaming",
                sink.largest
            ),
        ));
    }
    if fx.digest.is_some() && got.digest != fx.digest {
        return Err(violation(
            CHECK,
            format!("reported digest {:?}", got.digest),
        ));
    }
    Ok(())
}

/// `resolve` reports the fixture's digest (or `None` for sources that are not
/// content-addressed) and writes nothing.
///
/// # Errors
/// A [`Violation`] describing the difference.
pub async fn resolve_reports_digest(f: &dyn Fetcher, fx: &Fixture) -> Result<(), Violation> {
    const CHECK: &str = "resolve_reports_digest";
    let got = f
        .resolve(&fx.request())
        .await
        .map_err(|e| violation(CHECK, format!("resolve failed: {e}")))?;
    if got != fx.digest {
        return Err(violation(
            CHECK,
            format!("resolved {got:?}, expected {:?}", fx.digest),
        ));
    }
    Ok(())
}

/// A size limit one byte below the module is [`ErrorKind::InvalidModule`]
/// ([`Error::TooLarge`]), never a truncated success.
///
/// # Errors
/// A [`Violation`] describing what happened instead.
pub async fn size_limit_is_an_error(f: &dyn Fetcher, fx: &Fixture) -> Result<(), Violation> {
    const CHECK: &str = "size_limit_is_an_error";
    let limit = (fx.module.len() as u64).saturating_sub(1);
    let req = fx.request().with_max_size(limit).with_digest(fx.digest);
    let mut sink = Vec::new();
    match f.fetch(&req, &mut sink).await {
        Err(Error::TooLarge { limit: l, .. }) if l == limit => {}
        Err(e) => return Err(violation(CHECK, format!("wrong error: {e}"))),
        Ok(_) => return Err(violation(CHECK, "succeeded past the size limit")),
    }
    if sink.len() as u64 > limit {
        return Err(violation(
            CHECK,
            format!("wrote {} bytes past the limit", sink.len()),
        ));
    }
    Ok(())
}

/// An expired deadline is [`Error::Timeout`] from both calls, with nothing written.
///
/// # Errors
/// A [`Violation`] describing what happened instead.
pub async fn expired_deadline_is_a_timeout(f: &dyn Fetcher, fx: &Fixture) -> Result<(), Violation> {
    const CHECK: &str = "expired_deadline_is_a_timeout";
    let past = Instant::now()
        .checked_sub(Duration::from_secs(1))
        .unwrap_or_else(Instant::now);
    let req = FetchRequest::new(fx.url.clone(), past).with_digest(fx.digest);
    let mut sink = Vec::new();
    match f.fetch(&req, &mut sink).await {
        Err(e) if e.kind() == ErrorKind::Timeout => {}
        Err(e) => return Err(violation(CHECK, format!("fetch: wrong error: {e}"))),
        Ok(_) => return Err(violation(CHECK, "fetch succeeded after the deadline")),
    }
    if !sink.is_empty() {
        return Err(violation(CHECK, "fetch wrote bytes after the deadline"));
    }
    match f.resolve(&req).await {
        Err(e) if e.kind() == ErrorKind::Timeout => Ok(()),
        Ok(None) => Ok(()), // nothing to resolve, so no request was made
        Err(e) => Err(violation(CHECK, format!("resolve: wrong error: {e}"))),
        Ok(Some(_)) => Err(violation(CHECK, "resolve succeeded after the deadline")),
    }
}

struct FailingSink;

impl ModuleSink for FailingSink {
    fn write(&mut self, _: &[u8]) -> std::io::Result<()> {
        Err(std::io::Error::other("no space left on device (injected)"))
    }
}

/// A sink error stops the fetch and comes back as [`Error::Sink`].
///
/// # Errors
/// A [`Violation`] describing what happened instead.
pub async fn sink_error_stops_fetch(f: &dyn Fetcher, fx: &Fixture) -> Result<(), Violation> {
    const CHECK: &str = "sink_error_stops_fetch";
    let req = fx.request().with_digest(fx.digest);
    match f.fetch(&req, &mut FailingSink).await {
        Err(Error::Sink { source, .. }) if source.to_string().contains("injected") => Ok(()),
        Err(e) => Err(violation(CHECK, format!("wrong error: {e}"))),
        Ok(_) => Err(violation(CHECK, "succeeded although the sink failed")),
    }
}

/// A URL of a scheme the fetcher does not serve is refused with
/// [`Error::UnsupportedScheme`] (and no request).
///
/// # Errors
/// A [`Violation`] describing what happened instead.
pub async fn foreign_scheme_is_refused(f: &dyn Fetcher, fx: &Fixture) -> Result<(), Violation> {
    const CHECK: &str = "foreign_scheme_is_refused";
    let other = match fx.url.scheme() {
        Scheme::Oci => "https://127.0.0.1:9/not-oci.wasm",
        // http(s) and any plugged-in scheme (file://, s3://, ...).
        _ => "oci://127.0.0.1:9/not/http:v1",
    };
    let url = ModuleUrl::parse(other).map_err(|e| violation(CHECK, e.to_string()))?;
    let req = FetchRequest::new(url, Instant::now() + fx.timeout);
    match f.fetch(&req, &mut Vec::new()).await {
        Err(Error::UnsupportedScheme { .. }) => Ok(()),
        Err(e) => Err(violation(CHECK, format!("wrong error: {e}"))),
        Ok(_) => Err(violation(CHECK, format!("fetched a {other} URL"))),
    }
}

/// A digest no fixture has.
fn wrong_digest(fx: &Fixture) -> Sha256Digest {
    let mut bytes = [0x5a; 32];
    if fx.digest == Some(Sha256Digest::from_bytes(bytes)) {
        bytes[0] = 0xa5;
    }
    Sha256Digest::from_bytes(bytes)
}

/// A fetch pinned to a digest the source does not have fails: for
/// content-addressed sources with [`ErrorKind::Integrity`],
/// [`ErrorKind::NotFound`] or [`ErrorKind::Manifest`], never a success. (A
/// source that is not content-addressed ignores `req.digest` by contract and
/// reports no digest: its caller checks the module's own hash; this check
/// holds it to that.)
///
/// # Errors
/// A [`Violation`] describing what happened instead.
pub async fn wrong_pinned_digest_is_refused(
    f: &dyn Fetcher,
    fx: &Fixture,
) -> Result<(), Violation> {
    const CHECK: &str = "wrong_pinned_digest_is_refused";
    let req = fx.request().with_digest(Some(wrong_digest(fx)));
    let mut sink = Vec::new();
    let got = f.fetch(&req, &mut sink).await;
    match (fx.digest, got) {
        (Some(_), Err(e))
            if matches!(
                e.kind(),
                ErrorKind::Integrity | ErrorKind::NotFound | ErrorKind::Manifest
            ) =>
        {
            Ok(())
        }
        (Some(_), Err(e)) => Err(violation(CHECK, format!("wrong error: {e}"))),
        (Some(_), Ok(got)) => Err(violation(
            CHECK,
            format!("fetched {} bytes for a digest the source lacks", got.size),
        )),
        (None, Ok(got)) if got.digest.is_none() && sink == fx.module => Ok(()),
        (None, Ok(got)) => Err(violation(
            CHECK,
            format!(
                "a source that is not content-addressed reported {:?} / wrote {} bytes",
                got.digest,
                sink.len()
            ),
        )),
        (None, Err(e)) => Err(violation(CHECK, format!("fetch failed: {e}"))),
    }
}

const CANARY: &str = "Canary-S3cret-7f3a";

fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(T[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Secrets never appear in errors: with a pull secret (a Docker config whose
/// password is a canary) and, for `http(s)` URLs, the canary as the URL's
/// password, the errors of a size limit, a wrong pinned digest and an expired
/// deadline (and the fetcher's `Debug`) show neither the canary nor its
/// base64 forms.
///
/// # Errors
/// A [`Violation`] quoting the leaking message (with the canary masked).
pub async fn secrets_never_in_errors(f: &dyn Fetcher, fx: &Fixture) -> Result<(), Violation> {
    const CHECK: &str = "secrets_never_in_errors";
    let url = match fx.url.http() {
        Some(u) => {
            let mut u = u.clone();
            let _ = u.set_username("canary-user");
            let _ = u.set_password(Some(CANARY));
            ModuleUrl::parse(u.as_str()).unwrap_or_else(|_| fx.url.clone())
        }
        None => fx.url.clone(),
    };
    let registry = url.oci().map_or("", |o| o.registry()).to_owned();
    let auth = base64(format!("canary-user:{CANARY}").as_bytes());
    let config = format!(r#"{{"auths":{{"{registry}":{{"auth":"{auth}"}}}}}}"#);
    let secret = wasm_cache_core::PullSecret::new(config.into_bytes());
    let forbidden = [CANARY.to_owned(), auth, base64(CANARY.as_bytes())];
    let fresh = || {
        FetchRequest::new(url.clone(), Instant::now() + fx.timeout)
            .with_pull_secret(Some(secret.clone()))
    };
    let past = Instant::now()
        .checked_sub(Duration::from_secs(1))
        .unwrap_or_else(Instant::now);
    let requests = [
        fresh().with_digest(fx.digest).with_max_size(1),
        fresh().with_digest(Some(wrong_digest(fx))),
        FetchRequest::new(url.clone(), past).with_pull_secret(Some(secret.clone())),
    ];
    let mut shown = vec![format!("{f:?}")];
    for req in &requests {
        shown.push(format!("{req:?}"));
        if let Err(e) = f.fetch(req, &mut Vec::new()).await {
            shown.push(format!("{e} {e:?}"));
        }
        if let Err(e) = f.resolve(req).await {
            shown.push(format!("{e} {e:?}"));
        }
    }
    for text in shown {
        if forbidden.iter().any(|s| text.contains(s.as_str())) {
            let masked = forbidden
                .iter()
                .fold(text, |t, s| t.replace(s.as_str(), "<CANARY>"));
            return Err(violation(CHECK, format!("a secret was shown: {masked}")));
        }
    }
    Ok(())
}

/// A sink that takes on the digest check ([`ModuleSink::verify_sha256`]).
#[derive(Default)]
struct VerifyingSink {
    bytes: Vec<u8>,
    offered: Option<Sha256Digest>,
}

impl ModuleSink for VerifyingSink {
    fn write(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        self.bytes.extend_from_slice(chunk);
        Ok(())
    }

    fn verify_sha256(&mut self, digest: Sha256Digest) -> bool {
        self.offered = Some(digest);
        true
    }
}

/// A fetcher that hands the digest check to the sink
/// ([`ModuleSink::verify_sha256`]) names the digest of exactly the bytes it
/// then writes (and still writes the fixture's module).
///
/// # Errors
/// A [`Violation`] describing the difference.
pub async fn handed_over_digest_is_the_modules(
    f: &dyn Fetcher,
    fx: &Fixture,
) -> Result<(), Violation> {
    const CHECK: &str = "handed_over_digest_is_the_modules";
    let mut sink = VerifyingSink::default();
    let req = fx.request().with_digest(fx.digest);
    f.fetch(&req, &mut sink)
        .await
        .map_err(|e| violation(CHECK, format!("fetch failed: {e}")))?;
    if sink.bytes != fx.module {
        return Err(violation(CHECK, "wrote other bytes than the module"));
    }
    if let Some(offered) = sink.offered {
        let mut out = [0u8; 32];
        out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, &sink.bytes).as_ref());
        let actual = Sha256Digest::from_bytes(out);
        if offered != actual {
            return Err(violation(
                CHECK,
                format!(
                    "handed over {} for bytes whose sha256 is {}",
                    offered.to_prefixed(),
                    actual.to_prefixed()
                ),
            ));
        }
    }
    Ok(())
}

/// Runs every check against one fixture.
///
/// # Errors
/// The first [`Violation`].
pub async fn run_all(f: &dyn Fetcher, fx: &Fixture) -> Result<(), Violation> {
    fetch_writes_exact_bytes(f, fx).await?;
    resolve_reports_digest(f, fx).await?;
    size_limit_is_an_error(f, fx).await?;
    expired_deadline_is_a_timeout(f, fx).await?;
    sink_error_stops_fetch(f, fx).await?;
    wrong_pinned_digest_is_refused(f, fx).await?;
    secrets_never_in_errors(f, fx).await?;
    handed_over_digest_is_the_modules(f, fx).await?;
    foreign_scheme_is_refused(f, fx).await
}

#[cfg(test)]
mod tests {
    use super::*;

    const OCI: &str = "oci://127.0.0.1:5000/org/m:v1";

    fn module(n: usize) -> Vec<u8> {
        let mut m = b"\0asm\x01\0\0\0".to_vec();
        m.extend((0..n).map(|i| (i % 251) as u8));
        m
    }

    #[tokio::test]
    async fn memory_fetcher_conforms_for_http_and_oci() {
        let f = MemoryFetcher::for_schemes(&[Scheme::Http, Scheme::Https]);
        let m = module(100_000);
        f.insert("http://127.0.0.1/m.wasm", m.clone(), None);
        let fx = Fixture::new(
            ModuleUrl::parse("http://127.0.0.1/m.wasm").unwrap(),
            m.clone(),
        );
        run_all(&f, &fx).await.unwrap();

        let f = MemoryFetcher::for_schemes(&[Scheme::Oci]);
        let d = Sha256Digest::from_bytes([7; 32]);
        f.insert(OCI, m.clone(), Some(d));
        let fx = Fixture::new(ModuleUrl::parse(OCI).unwrap(), m).with_digest(d);
        run_all(&f, &fx).await.unwrap();
    }

    #[tokio::test]
    async fn faults_and_counters() {
        let f = MemoryFetcher::new();
        let url = ModuleUrl::parse("http://127.0.0.1/m.wasm").unwrap();
        f.insert(url.as_str(), module(10), None);
        f.inject(url.as_str(), Fault::Status(503), 2);
        let req = FetchRequest::new(url.clone(), Instant::now() + Duration::from_secs(5));
        for _ in 0..2 {
            let e = f.fetch(&req, &mut Vec::new()).await.unwrap_err();
            assert!(e.is_retryable(), "{e}");
        }
        assert!(f.fetch(&req, &mut Vec::new()).await.is_ok());
        assert_eq!(f.fetch_count(), 3);

        f.inject(url.as_str(), Fault::TruncateBody, 1);
        let mut sink = Vec::new();
        assert!(f.fetch(&req, &mut sink).await.is_err());
        assert_eq!(sink.len(), 9);
        let e = f
            .fetch(&req.clone().with_digest(None), &mut Vec::new())
            .await;
        assert!(e.is_ok());
    }

    #[tokio::test]
    async fn a_broken_fetcher_is_caught() {
        /// Truncates silently at the size limit, like the reference does.
        #[derive(Debug)]
        struct Truncating(MemoryFetcher);
        #[async_trait]
        impl Fetcher for Truncating {
            async fn resolve(&self, r: &FetchRequest) -> Result<Option<Sha256Digest>, Error> {
                self.0.resolve(r).await
            }
            async fn fetch(
                &self,
                r: &FetchRequest,
                s: &mut dyn ModuleSink,
            ) -> Result<Fetched, Error> {
                let r = r.clone().with_max_size(u64::MAX);
                let mut all = Vec::new();
                self.0.fetch(&r, &mut all).await?;
                all.truncate(usize::try_from(r.max_size).unwrap_or(usize::MAX));
                s.write(&all).map_err(|source| Error::Sink {
                    url: String::new(),
                    source,
                })?;
                Ok(Fetched::new(all.len() as u64, None))
            }
        }
        let inner = MemoryFetcher::new();
        inner.insert("http://127.0.0.1/m.wasm", module(10), None);
        let f = Truncating(inner);
        let fx = Fixture::new(
            ModuleUrl::parse("http://127.0.0.1/m.wasm").unwrap(),
            module(10),
        );
        let v = size_limit_is_an_error(&f, &fx).await.unwrap_err();
        assert_eq!(v.check, "size_limit_is_an_error");
        assert!(
            v.to_string().contains("succeeded past the size limit"),
            "{v}"
        );
    }
}
