//! The `Fetcher` trait: how a module gets from somewhere into a caller's sink.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::{Error, ModuleUrl, Sha256Digest};

/// The default size limit of a module, after unboxing: 256 MiB.
pub const DEFAULT_MAX_MODULE_SIZE: u64 = 256 * 1024 * 1024;

/// Pull-secret bytes: a Docker `config.json`
/// (`{"auths":{"<registry>":{"auth":"base64(user:pass)"}}}`).
///
/// `Debug` shows only the length; there is no `Display`. Clones share the bytes.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PullSecret(Arc<[u8]>);

impl PullSecret {
    /// Wraps secret bytes.
    pub fn new(bytes: impl Into<Arc<[u8]>>) -> Self {
        Self(bytes.into())
    }

    /// The secret bytes. Never log them.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for PullSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PullSecret(<redacted, {} bytes>)", self.0.len())
    }
}

/// One fetch, as the cache asks for it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct FetchRequest {
    /// What to fetch.
    pub url: ModuleUrl,
    /// When the whole operation (resolve, connect, redirects, retries, body)
    /// must be over. A fetcher must not start a request after it.
    pub deadline: Instant,
    /// Credentials for the registry, if any.
    pub pull_secret: Option<PullSecret>,
    /// Size limit of the module after unboxing; more is an error, never a truncation.
    pub max_size: u64,
    /// For content-addressed sources (OCI): fetch exactly the manifest with this
    /// digest, as returned by [`Fetcher::resolve`] or pinned by the caller.
    /// Ignored by fetchers whose `resolve` returns `None`.
    pub digest: Option<Sha256Digest>,
    /// Where [`Fetcher::signatures`] finds a detached signature when it is
    /// not `<url>.sig` (http(s) sources; ignored by content-addressed ones).
    pub signature_url: Option<ModuleUrl>,
}

impl FetchRequest {
    /// A request for `url` that must be over by `deadline`, with no secret,
    /// the default size limit and no digest.
    pub fn new(url: ModuleUrl, deadline: Instant) -> Self {
        Self {
            url,
            deadline,
            pull_secret: None,
            max_size: DEFAULT_MAX_MODULE_SIZE,
            digest: None,
            signature_url: None,
        }
    }

    /// Sets the pull secret.
    #[must_use]
    pub fn with_pull_secret(mut self, secret: Option<PullSecret>) -> Self {
        self.pull_secret = secret;
        self
    }

    /// Sets the size limit.
    #[must_use]
    pub fn with_max_size(mut self, max_size: u64) -> Self {
        self.max_size = max_size;
        self
    }

    /// Sets the digest to fetch.
    #[must_use]
    pub fn with_digest(mut self, digest: Option<Sha256Digest>) -> Self {
        self.digest = digest;
        self
    }

    /// Sets where a detached signature is found instead of `<url>.sig`.
    #[must_use]
    pub fn with_signature_url(mut self, url: Option<ModuleUrl>) -> Self {
        self.signature_url = url;
        self
    }

    /// Time left before the deadline, measured from `now`.
    pub fn remaining(&self, now: Instant) -> Duration {
        self.deadline.saturating_duration_since(now)
    }

    /// The timeout error for this request, `elapsed` being the time it was given.
    pub fn timeout_error(&self, elapsed: Duration) -> Error {
        Error::Timeout {
            url: self.url.redacted(),
            elapsed,
        }
    }
}

/// Where a fetcher writes the module: the unboxed Wasm bytes, in order.
///
/// The cache's sink hashes and writes to a temporary file as chunks arrive, so a
/// fetcher must never buffer the whole module. An error from `write` is final:
/// the fetcher stops and returns [`Error::Sink`].
pub trait ModuleSink: Send {
    /// Takes the next chunk of the module.
    ///
    /// # Errors
    /// Any I/O error (disk full, permissions, a size limit of the sink).
    fn write(&mut self, chunk: &[u8]) -> std::io::Result<()>;

    /// Told, as soon as the fetcher knows, how many module bytes will come in
    /// all (a `Content-Length` or a layer size of an unboxed
    /// module). Advisory only: for progress displays, never for limits or
    /// checks. Wrapping sinks forward it. The default ignores it.
    fn size_hint(&mut self, len: u64) {
        let _ = len;
    }

    /// Offers the sink the check that the sha256 of everything written equals
    /// `digest` (a fetcher whose source names the module's own digest, such as
    /// an OCI raw Wasm layer, asks this before writing). Returns `true` when the
    /// sink's owner takes it on: it then refuses the module unless the digest
    /// matches, and the fetcher need not hash the bytes itself (one SHA-256
    /// pass per byte). The default, `false`, leaves the check to the fetcher.
    fn verify_sha256(&mut self, digest: Sha256Digest) -> bool {
        let _ = digest;
        false
    }

    /// Asks the sink to forget everything written so far (and any
    /// [`verify_sha256`](Self::verify_sha256) it took on), so the module can
    /// be written again from its first byte: a fetcher that found one source
    /// (an untrusted registry mirror) served bytes that do not match their
    /// digest, and has another source to try. Returns `true` when the sink
    /// did; the default, `false`, means it cannot, and the fetcher then fails
    /// with the error it had. Wrapping sinks forward it.
    fn restart(&mut self) -> bool {
        false
    }
}

impl ModuleSink for Vec<u8> {
    fn write(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        self.extend_from_slice(chunk);
        Ok(())
    }

    fn restart(&mut self) -> bool {
        self.clear();
        true
    }
}

impl<S: ModuleSink + ?Sized> ModuleSink for &mut S {
    fn write(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        (**self).write(chunk)
    }
    fn size_hint(&mut self, len: u64) {
        (**self).size_hint(len);
    }

    fn verify_sha256(&mut self, digest: Sha256Digest) -> bool {
        (**self).verify_sha256(digest)
    }

    fn restart(&mut self) -> bool {
        (**self).restart()
    }
}

/// A [`ModuleSink`] over any [`std::io::Write`] (a file, a socket, a hasher):
/// each chunk is written whole. Memory stays bounded by the writer's own
/// buffering.
///
/// ```
/// use wasm_cache_core::{IoSink, ModuleSink};
///
/// let mut sink = IoSink::new(Vec::new());
/// sink.write(b"\0asm")?;
/// sink.write(b"\x01\0\0\0")?;
/// assert_eq!(sink.written(), 8);
/// assert_eq!(sink.into_inner(), b"\0asm\x01\0\0\0");
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct IoSink<W> {
    inner: W,
    written: u64,
}

impl<W> IoSink<W> {
    /// A sink writing into `inner`.
    pub fn new(inner: W) -> Self {
        Self { inner, written: 0 }
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The writer back (not flushed: flush it if it buffers).
    pub fn into_inner(self) -> W {
        self.inner
    }
}

impl<W: std::io::Write + Send> ModuleSink for IoSink<W> {
    fn write(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        self.inner.write_all(chunk)?;
        self.written += chunk.len() as u64;
        Ok(())
    }
}

/// What a finished fetch reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Fetched {
    /// Bytes written to the sink.
    pub size: u64,
    /// For content-addressed sources, the digest of what was fetched (the OCI
    /// manifest digest); `None` when the module's own hash is the checksum.
    pub digest: Option<Sha256Digest>,
    /// Which kind of host served the module's bytes.
    pub source: FetchSource,
}

impl Fetched {
    /// A fetch that wrote `size` bytes and reports `digest`, served by the
    /// URL's own host ([`FetchSource::Upstream`]).
    pub fn new(size: u64, digest: Option<Sha256Digest>) -> Self {
        Self {
            size,
            digest,
            source: FetchSource::Upstream,
        }
    }

    /// Sets which kind of host served the bytes.
    #[must_use]
    pub fn with_source(mut self, source: FetchSource) -> Self {
        self.source = source;
        self
    }
}

/// Which kind of host served a fetch: the URL's own (the upstream) or a
/// mirror configured for it (a registry mirror or pull-through cache).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum FetchSource {
    /// The host the URL names.
    #[default]
    Upstream,
    /// A mirror of that host.
    Mirror,
}

impl FetchSource {
    /// The metrics label value: `upstream` or `mirror`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Upstream => "upstream",
            Self::Mirror => "mirror",
        }
    }
}

/// One layer of a cosign signature manifest, as fetched: bytes only, the
/// verdict is the caller's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureLayer {
    /// The layer's media type.
    pub media_type: String,
    /// The layer's bytes, already checked against its descriptor digest.
    pub payload: Vec<u8>,
    /// The layer's `dev.cosignproject.cosign/signature` annotation, if any.
    pub signature: Option<String>,
}

/// The signature material a source holds for a digest (see
/// [`Fetcher::signatures`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Signatures {
    /// cosign's classic OCI layout: the layers of the `sha256-<hex>.sig` manifest.
    Cosign(Vec<SignatureLayer>),
    /// A detached `cosign sign-blob` signature (base64 text) over the module bytes.
    Detached(String),
    /// The source has no signature for the digest; why (for the error's reasons).
    Missing(String),
    /// What an OCI registry holds for the digest by both discovery methods:
    /// cosign's classic `sha256-<hex>.sig` layers and sigstore bundles
    /// attached as OCI 1.1 referrers.
    Oci {
        /// The layers of the `sha256-<hex>.sig` manifest (may be empty).
        cosign: Vec<SignatureLayer>,
        /// Sigstore bundles (their JSON, checked against their descriptors).
        bundles: Vec<Vec<u8>>,
        /// Why a method found nothing, or skipped a candidate (for the
        /// error's reasons).
        notes: Vec<String>,
    },
}

/// A source of Wasm modules for one or more URL schemes.
///
/// # Contract
/// - `resolve` is cheap: for content-addressed sources (OCI) it returns the
///   digest that identifies what `fetch` would write (the manifest digest the
///   reference names; for an image index, the index's digest) without downloading
///   the module; other sources return `Ok(None)`. The cache looks the digest up
///   before downloading anything, so a cached module is not fetched again.
/// - `fetch` writes the **unboxed** module (gzip/tar removed) into `sink`, chunk
///   by chunk, with memory bounded by a constant, not by the module's size. With
///   `req.digest` set, it fetches exactly that digest, or fails.
/// - More than `req.max_size` bytes is [`Error::TooLarge`]; nothing is truncated.
/// - Nothing is started after `req.deadline`; an expired deadline is
///   [`Error::Timeout`] without any request made.
/// - A URL of a scheme the fetcher does not serve is [`Error::UnsupportedScheme`].
/// - A sink error stops the fetch and is returned as [`Error::Sink`].
/// - On error the sink may have received a prefix of the module: the caller
///   discards it. A fetcher never touches the cache's store.
/// - Secrets (the pull secret, passwords, tokens, credentials inside URLs) never
///   appear in errors, logs or `Debug` output.
/// - `signatures` fetches only signature material for `digest` (the digest
///   `resolve` returned, or for other sources the module's sha256), through the
///   same guarded client, under the same deadline, with every read bounded;
///   it never downloads the module. "No signature there" is
///   [`Signatures::Missing`], not an error. Fetchers that cannot find
///   signatures keep the default, [`Error::Unsupported`].
///
/// The `wasm-cache-conformance` crate has a check for each rule; every backend
/// runs them, and a third-party fetcher can too.
///
/// # Implementing it
/// The trait's methods are `async fn`s through the
/// [`async_trait`](https://docs.rs/async-trait) attribute (it keeps the trait
/// object-safe for `Arc<dyn Fetcher>`): put `#[async_trait]` on your `impl`
/// too, or the compiler reports E0195. `wasm_cache::fetcher` re-exports the
/// attribute with everything else an implementation needs. A fetcher for
/// `file://` URLs:
///
/// ```
/// use async_trait::async_trait;
/// use wasm_cache_core::{
///     Error, ErrorKind, FetchRequest, Fetched, Fetcher, ModuleSink, Scheme, Sha256Digest,
/// };
/// use std::io::Read as _;
///
/// #[derive(Debug)]
/// struct FileFetcher;
///
/// #[async_trait]
/// impl Fetcher for FileFetcher {
///     async fn resolve(&self, _req: &FetchRequest) -> Result<Option<Sha256Digest>, Error> {
///         Ok(None) // not content-addressed: the module's own hash is its checksum
///     }
///
///     async fn fetch(&self, req: &FetchRequest, sink: &mut dyn ModuleSink) -> Result<Fetched, Error> {
///         let url = req.url.as_str();
///         let path = match req.url.opaque() {
///             Some(u) if req.url.has_scheme(&Scheme::new("file")?) => u.path().to_owned(),
///             _ => return Err(Error::unsupported_scheme(req.url.scheme().as_str())),
///         };
///         if req.remaining(std::time::Instant::now()).is_zero() {
///             return Err(Error::timeout(url, std::time::Duration::ZERO));
///         }
///         let mut file = std::fs::File::open(&path)
///             .map_err(|e| Error::backend("file", url, ErrorKind::NotFound, e))?;
///         let (mut buf, mut size) = (vec![0; 64 * 1024], 0u64);
///         loop {
///             let n = file.read(&mut buf).map_err(|e| Error::backend("file", url, ErrorKind::Transport, e))?;
///             if n == 0 {
///                 return Ok(Fetched::new(size, None));
///             }
///             size += n as u64;
///             if size > req.max_size {
///                 return Err(Error::too_large(url, req.max_size));
///             }
///             sink.write(&buf[..n]).map_err(|e| Error::sink(url, e))?;
///         }
///     }
/// }
/// ```
#[async_trait]
pub trait Fetcher: Send + Sync + fmt::Debug + 'static {
    /// The digest that identifies what [`Fetcher::fetch`] would write, if the
    /// source is content-addressed; `None` otherwise.
    async fn resolve(&self, req: &FetchRequest) -> Result<Option<Sha256Digest>, Error>;

    /// Writes the module into `sink`.
    async fn fetch(&self, req: &FetchRequest, sink: &mut dyn ModuleSink) -> Result<Fetched, Error>;

    /// The signature material the source holds for `digest`.
    async fn signatures(
        &self,
        req: &FetchRequest,
        digest: &Sha256Digest,
    ) -> Result<Signatures, Error> {
        let _ = (req, digest);
        Err(Error::Unsupported {
            what: "signature verification".to_owned(),
        })
    }
}

#[async_trait]
impl<F: Fetcher + ?Sized> Fetcher for Arc<F> {
    async fn resolve(&self, req: &FetchRequest) -> Result<Option<Sha256Digest>, Error> {
        (**self).resolve(req).await
    }
    async fn fetch(&self, req: &FetchRequest, sink: &mut dyn ModuleSink) -> Result<Fetched, Error> {
        (**self).fetch(req, sink).await
    }

    async fn signatures(
        &self,
        req: &FetchRequest,
        digest: &Sha256Digest,
    ) -> Result<Signatures, Error> {
        (**self).signatures(req, digest).await
    }
}

/// The Wasm binary magic, `\0asm`.
pub const WASM_MAGIC: [u8; 4] = [0x00, 0x61, 0x73, 0x6d];

/// Checks the 8-byte Wasm header: the magic and binary version 1.
///
/// # Errors
/// A reason naming what is wrong (too short, bad magic, other version).
pub fn check_wasm_header(prefix: &[u8]) -> Result<(), String> {
    if prefix.len() < 8 {
        return Err(format!(
            "{} bytes is shorter than the 8-byte Wasm header",
            prefix.len()
        ));
    }
    if prefix[..4] != WASM_MAGIC {
        return Err(format!(
            "bad magic {:02x?}, expected {WASM_MAGIC:02x?}",
            &prefix[..4]
        ));
    }
    if prefix[4..8] != [1, 0, 0, 0] {
        return Err(format!(
            "unsupported Wasm binary version {:02x?}, expected [01, 00, 00, 00]",
            &prefix[4..8]
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_check() {
        assert!(check_wasm_header(b"\0asm\x01\0\0\0rest").is_ok());
        assert!(check_wasm_header(b"\0asm").unwrap_err().contains("shorter"));
        assert!(
            check_wasm_header(b"\x7fELF\x01\0\0\0")
                .unwrap_err()
                .contains("bad magic")
        );
        assert!(
            check_wasm_header(b"\0asm\x02\0\0\0")
                .unwrap_err()
                .contains("version")
        );
    }

    #[test]
    fn secret_debug_is_redacted() {
        let s = PullSecret::new(b"{\"auths\":{\"x\":{\"auth\":\"aHVudGVyMg==\"}}}".to_vec());
        let shown = format!("{s:?}");
        assert!(!shown.contains("aHVudGVyMg"), "{shown}");
        let req = FetchRequest::new(ModuleUrl::parse("oci://a.io/b").unwrap(), Instant::now())
            .with_pull_secret(Some(s));
        assert!(!format!("{req:?}").contains("aHVudGVyMg"));
    }
}
