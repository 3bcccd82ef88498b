//! A `file://` fetcher plugged into the cache, written with nothing but the
//! public API (`wasm_cache::fetcher::*`), checked by the conformance suite,
//! then used through `Cache::get`.
//!
//! Run with `cargo run -p wasm-cache --example file_fetcher`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use wasm_cache::fetcher::*;
use wasm_cache::{Cache, GetRequest};

/// Serves `file:///abs/path` URLs from under one root directory, streaming
/// the file in 64 KiB chunks.
#[derive(Debug)]
struct FileFetcher {
    root: PathBuf,
}

impl FileFetcher {
    fn path_of(&self, req: &FetchRequest) -> Result<PathBuf, Error> {
        let url = req.url.redacted();
        if req.url.scheme().as_str() != "file" {
            return Err(Error::unsupported_scheme(req.url.scheme().as_str()));
        }
        let path = req
            .url
            .opaque()
            .and_then(|u| u.to_file_path().ok())
            .ok_or_else(|| Error::invalid_url(&url, "not an absolute local file path"))?;
        match path.canonicalize() {
            Ok(real) if real.starts_with(&self.root) => Ok(real),
            Ok(_) => Err(Error::invalid_url(&url, "names a file outside the root")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::not_found(&url)),
            Err(e) => Err(Error::backend("file", &url, ErrorKind::Storage, e)),
        }
    }
}

#[async_trait]
impl Fetcher for FileFetcher {
    async fn resolve(&self, req: &FetchRequest) -> Result<Option<Sha256Digest>, Error> {
        if req.remaining(Instant::now()).is_zero() {
            return Err(req.timeout_error(std::time::Duration::ZERO));
        }
        self.path_of(req).map(|_| None) // files are not content-addressed
    }

    async fn fetch(&self, req: &FetchRequest, sink: &mut dyn ModuleSink) -> Result<Fetched, Error> {
        use std::io::Read as _;
        let started = Instant::now();
        if req.remaining(started).is_zero() {
            return Err(req.timeout_error(std::time::Duration::ZERO));
        }
        let path = self.path_of(req)?;
        let url = req.url.redacted();
        let io = |e: std::io::Error| Error::backend("file", &url, ErrorKind::Storage, e);
        // Local reads are short; a production fetcher for slow disks would
        // use tokio::fs or spawn_blocking.
        let mut file = std::fs::File::open(path).map_err(io)?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut written = 0u64;
        loop {
            if req.remaining(Instant::now()).is_zero() {
                return Err(req.timeout_error(started.elapsed()));
            }
            let n = file.read(&mut buf).map_err(io)?;
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

fn file_url(path: &Path) -> String {
    format!("file://{}", path.display())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = tempfile::tempdir()?;
    let root = files.path().canonicalize()?;
    let module = b"\0asm\x01\0\0\0 a module on disk".to_vec();
    let source = root.join("filter.wasm");
    std::fs::write(&source, &module)?;
    let fetcher = Arc::new(FileFetcher { root: root.clone() });

    // The trait's contract, checked the way every backend of the workspace is.
    let fixture =
        wasm_cache_conformance::Fixture::new(ModuleUrl::parse(&file_url(&source))?, module.clone());
    wasm_cache_conformance::run_all(fetcher.as_ref(), &fixture).await?;

    // Plugged into the cache for the `file` scheme.
    let cache_dir = tempfile::tempdir()?;
    let cache = Cache::builder(cache_dir.path())
        .fetcher(Scheme::new("file")?, fetcher)
        .build()
        .await?;
    let path = cache.get(&GetRequest::new(file_url(&source))).await?;
    assert_eq!(std::fs::read(&path)?, module);
    println!("{} -> {}", file_url(&source), path.display());
    cache.shutdown().await?;
    Ok(())
}
