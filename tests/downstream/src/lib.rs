//! A downstream project's `file://` fetcher, written against the public API of
//! `wasm-cache` only (`wasm_cache::fetcher::*`), as a third-party backend
//! would be.
//!
//! `file:///abs/path/module.wasm` is served from the local file system,
//! confined to one root directory (a URL naming a file outside it, through
//! `..` or a symlink, is refused). Files are not content-addressed: `resolve`
//! reports no digest and a pinned digest is left to the cache's own hash check.

use std::path::{Path, PathBuf};
use std::time::Instant;

use tokio::io::AsyncReadExt as _;
use wasm_cache::fetcher::*;

/// The chunk size handed to the sink: the file is streamed, never read whole.
const CHUNK: usize = 64 * 1024;

/// Serves `file://` URLs from under one directory.
#[derive(Debug, Clone)]
pub struct FileFetcher {
    root: PathBuf,
    scheme: Scheme,
}

impl FileFetcher {
    /// The scheme this fetcher serves (`file`).
    ///
    /// # Errors
    /// Never in practice: `file` is a well-formed scheme.
    pub fn scheme() -> Result<Scheme, Error> {
        Scheme::new("file")
    }

    /// A fetcher for files under `root` (resolved once, here).
    ///
    /// # Errors
    /// [`Error`] (invalid configuration) if `root` cannot be resolved.
    pub fn new(root: impl AsRef<Path>) -> Result<Self, Error> {
        let shown = format!("file://{}", root.as_ref().display());
        let root = root
            .as_ref()
            .canonicalize()
            .map_err(|e| Error::backend("file", &shown, ErrorKind::InvalidInput, e))?;
        Ok(Self {
            root,
            scheme: Self::scheme()?,
        })
    }

    /// The file a request names, checked to be under the root.
    fn path_of(&self, req: &FetchRequest) -> Result<PathBuf, Error> {
        let url = req.url.redacted();
        if !req.url.has_scheme(&self.scheme) {
            return Err(Error::unsupported_scheme(req.url.scheme().as_str()));
        }
        let path = req
            .url
            .opaque()
            .and_then(|u| u.to_file_path().ok())
            .ok_or_else(|| Error::invalid_url(&url, "not an absolute local file path"))?;
        let real = match path.canonicalize() {
            Ok(p) => p,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::not_found(&url));
            }
            Err(e) => return Err(Error::backend("file", &url, ErrorKind::Storage, e)),
        };
        if !real.starts_with(&self.root) {
            return Err(Error::invalid_url(
                &url,
                "names a file outside the fetcher's root",
            ));
        }
        Ok(real)
    }

    fn check_deadline(req: &FetchRequest, started: Instant) -> Result<(), Error> {
        if req.remaining(Instant::now()).is_zero() {
            return Err(req.timeout_error(started.elapsed()));
        }
        Ok(())
    }
}

#[async_trait]
impl Fetcher for FileFetcher {
    async fn resolve(&self, req: &FetchRequest) -> Result<Option<Sha256Digest>, Error> {
        Self::check_deadline(req, Instant::now())?;
        self.path_of(req)?;
        Ok(None)
    }

    async fn fetch(&self, req: &FetchRequest, sink: &mut dyn ModuleSink) -> Result<Fetched, Error> {
        let started = Instant::now();
        Self::check_deadline(req, started)?;
        let path = self.path_of(req)?;
        let url = req.url.redacted();
        let io = |e: std::io::Error| Error::backend("file", &url, ErrorKind::Storage, e);
        let mut file = tokio::fs::File::open(&path).await.map_err(io)?;
        if let Ok(meta) = file.metadata().await {
            sink.size_hint(meta.len());
        }
        let mut buf = vec![0u8; CHUNK];
        let mut written = 0u64;
        loop {
            let left = req.remaining(Instant::now());
            if left.is_zero() {
                return Err(req.timeout_error(started.elapsed()));
            }
            let n = match tokio::time::timeout(left, file.read(&mut buf)).await {
                Ok(read) => read.map_err(io)?,
                Err(_) => return Err(req.timeout_error(started.elapsed())),
            };
            if n == 0 {
                return Ok(Fetched::new(written, None));
            }
            if written + n as u64 > req.max_size {
                return Err(Error::too_large(&url, req.max_size));
            }
            sink.write(&buf[..n]).map_err(|e| Error::sink(&url, e))?;
            written += n as u64;
        }
    }
}
