//! What [`Cache::get_detailed`](crate::Cache::get_detailed) and
//! [`Cache::resolve`](crate::Cache::resolve) report.

use std::path::PathBuf;
use std::time::Instant;

use wasm_cache_core::{FetchRequest, Fetcher, ModuleSink, ModuleUrl, Sha256Digest};
use wasm_store_fs::FsStore;

use crate::{Error, GetRequest};

/// A module handed out by [`Cache::get_detailed`](crate::Cache::get_detailed).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Outcome {
    /// The local, verified file (what [`Cache::get`](crate::Cache::get) returns).
    pub path: PathBuf,
    /// The sha256 of the module's bytes (also its file name).
    pub sha256: Sha256Digest,
    /// Its size in bytes.
    pub size: u64,
    /// For content-addressed sources (OCI), the digest of the manifest the
    /// module came from; `None` when the module's own hash is its checksum.
    pub manifest_digest: Option<Sha256Digest>,
    /// `true` when the module was served from the cache, `false` when this
    /// call (or a concurrent one it joined) downloaded it.
    pub cached: bool,
}

impl Outcome {
    pub(crate) fn new(
        store: &FsStore,
        path: PathBuf,
        checksum: Sha256Digest,
        content: Sha256Digest,
        cached: bool,
    ) -> Self {
        let size = match store.get(&content) {
            Some(m) => m.size,
            // Purged between the lookup and now (the path may still be open by
            // the caller): the file, if any, says.
            None => std::fs::symlink_metadata(&path).map_or(0, |m| m.len()),
        };
        Self {
            path,
            sha256: content,
            size,
            manifest_digest: (checksum != content).then_some(checksum),
            cached,
        }
    }
}

/// What a URL names now, as [`Cache::resolve`](crate::Cache::resolve) found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Resolved {
    /// The digest.
    pub digest: Sha256Digest,
    /// `true` when it is a manifest digest (content-addressed sources),
    /// `false` when it is the sha256 of the downloaded module.
    pub manifest: bool,
    /// For a downloaded module, its size in bytes.
    pub size: Option<u64>,
}

/// Hashes what a fetcher writes, checking the Wasm header; keeps nothing.
struct Hashing {
    ctx: ring::digest::Context,
    head: [u8; 8],
    len: u64,
}

impl ModuleSink for Hashing {
    fn write(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        if let Ok(start) = usize::try_from(self.len)
            && start < self.head.len()
        {
            let n = (self.head.len() - start).min(chunk.len());
            self.head[start..start + n].copy_from_slice(&chunk[..n]);
        }
        self.ctx.update(chunk);
        self.len += chunk.len() as u64;
        Ok(())
    }
}

pub(crate) async fn resolve(
    fetcher: &dyn Fetcher,
    url: &ModuleUrl,
    req: &GetRequest,
    max_size: u64,
    download: bool,
) -> Result<Option<Resolved>, Error> {
    let freq = FetchRequest::new(url.clone(), Instant::now() + req.timeout)
        .with_pull_secret(req.pull_secret.clone())
        .with_max_size(max_size);
    if let Some(digest) = fetcher.resolve(&freq).await? {
        return Ok(Some(Resolved {
            digest,
            manifest: true,
            size: None,
        }));
    }
    if !download {
        return Ok(None);
    }
    let mut sink = Hashing {
        ctx: ring::digest::Context::new(&ring::digest::SHA256),
        head: [0; 8],
        len: 0,
    };
    fetcher.fetch(&freq, &mut sink).await?;
    if sink.len < sink.head.len() as u64 {
        return Err(wasm_cache_core::Error::InvalidModule {
            url: url.redacted(),
            reason: format!("{} bytes is shorter than the 8-byte Wasm header", sink.len),
        }
        .into());
    }
    wasm_cache_core::check_wasm_header(&sink.head).map_err(|reason| {
        wasm_cache_core::Error::InvalidModule {
            url: url.redacted(),
            reason,
        }
    })?;
    let mut bytes = [0u8; 32];
    bytes.copy_from_slice(sink.ctx.finish().as_ref());
    Ok(Some(Resolved {
        digest: Sha256Digest::from_bytes(bytes),
        manifest: false,
        size: Some(sink.len),
    }))
}
