//! Everything a fetcher implementation needs, in one import, for projects that
//! plug their own backend (`file://`, `s3://`, a mirror protocol...) into the
//! cache with [`CacheBuilder::fetcher`](crate::CacheBuilder::fetcher):
//!
//! ```
//! use wasm_cache::fetcher::*;
//!
//! #[derive(Debug)]
//! struct Fixed(Vec<u8>);
//!
//! #[async_trait]
//! impl Fetcher for Fixed {
//!     async fn resolve(&self, _req: &FetchRequest) -> Result<Option<Sha256Digest>, Error> {
//!         Ok(None)
//!     }
//!     async fn fetch(&self, req: &FetchRequest, sink: &mut dyn ModuleSink) -> Result<Fetched, Error> {
//!         sink.write(&self.0).map_err(|e| Error::sink(req.url.as_str(), e))?;
//!         Ok(Fetched::new(self.0.len() as u64, None))
//!     }
//! }
//! # tokio::runtime::Runtime::new()?.block_on(async {
//! let dir = tempfile::tempdir()?;
//! let cache = wasm_cache::Cache::builder(dir.path())
//!     .default_fetchers(false)
//!     .fetcher(Scheme::new("fixed")?, std::sync::Arc::new(Fixed(b"\0asm\x01\0\0\0".to_vec())))
//!     .build()
//!     .await?;
//! let path = cache.get(&wasm_cache::GetRequest::new("fixed://anything")).await?;
//! assert_eq!(std::fs::read(path)?, b"\0asm\x01\0\0\0");
//! cache.shutdown().await?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The trait's rules are in [`Fetcher`]'s "Contract" section; the
//! `wasm-cache-conformance` crate checks them (`run_all`).

pub use crate::lazy::LazyFetcher;
pub use async_trait::async_trait;
pub use wasm_cache_core::retry::Backoff;
pub use wasm_cache_core::{
    BoxError, Error, ErrorKind, FetchRequest, FetchSource, Fetched, Fetcher, IoSink, ModuleSink,
    ModuleUrl, OciReference, PullSecret, Scheme, Sha256Digest, WASM_MAGIC, check_wasm_header,
    redact_url,
};

use tokio::io::{AsyncWrite, AsyncWriteExt as _};
use tokio::runtime::{Handle, RuntimeFlavor};

/// A [`ModuleSink`] over a tokio [`AsyncWrite`]: each chunk is written whole
/// before `write` returns.
///
/// [`ModuleSink::write`] is synchronous (the cache's own sink hashes and
/// writes to a file), so this adapter runs the write on the current task with
/// [`tokio::task::block_in_place`]: it needs tokio's multi-thread runtime and
/// refuses (with an error, not a panic) on any other.
#[derive(Debug)]
pub struct AsyncWriteSink<W> {
    inner: W,
    written: u64,
}

impl<W> AsyncWriteSink<W> {
    /// A sink writing into `inner`.
    pub fn new(inner: W) -> Self {
        Self { inner, written: 0 }
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The writer back (not flushed).
    pub fn into_inner(self) -> W {
        self.inner
    }
}

impl<W: AsyncWrite + Unpin + Send> ModuleSink for AsyncWriteSink<W> {
    fn write(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        let handle = Handle::try_current().map_err(std::io::Error::other)?;
        if handle.runtime_flavor() != RuntimeFlavor::MultiThread {
            return Err(std::io::Error::other(
                "AsyncWriteSink needs tokio's multi-thread runtime",
            ));
        }
        tokio::task::block_in_place(|| handle.block_on(self.inner.write_all(chunk)))?;
        self.written += chunk.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn async_write_sink_writes_every_chunk_in_order() {
        let (mut reader, writer) = tokio::io::duplex(1 << 20);
        let mut sink = AsyncWriteSink::new(writer);
        sink.write(b"\0asm").unwrap();
        sink.write(b"\x01\0\0\0").unwrap();
        assert_eq!(sink.written(), 8);
        drop(sink);
        let mut got = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut got)
            .await
            .unwrap();
        assert_eq!(got, b"\0asm\x01\0\0\0");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn async_write_sink_refuses_a_current_thread_runtime() {
        let mut sink = AsyncWriteSink::new(tokio::io::sink());
        let e = sink.write(b"x").unwrap_err();
        assert!(e.to_string().contains("multi-thread"), "{e}");
    }
}
