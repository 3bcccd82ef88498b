//! A `Fetcher` layer that shows download progress on a terminal.

use std::io::IsTerminal;

use async_trait::async_trait;
use indicatif::{ProgressBar, ProgressStyle};
use wasm_cache_core::{Error, FetchRequest, Fetched, Fetcher, ModuleSink, Sha256Digest};

/// Wraps a fetcher; when stderr is a terminal, a spinner with bytes and rate
/// follows each download. Otherwise it adds nothing.
#[derive(Debug)]
pub(crate) struct Progress<F> {
    inner: F,
    enabled: bool,
}

impl<F> Progress<F> {
    pub(crate) fn new(inner: F) -> Self {
        Self {
            inner,
            enabled: std::io::stderr().is_terminal(),
        }
    }
}

struct Counting<'a> {
    sink: &'a mut dyn ModuleSink,
    bar: &'a ProgressBar,
}

impl ModuleSink for Counting<'_> {
    fn write(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        self.sink.write(chunk)?;
        self.bar.inc(chunk.len() as u64);
        Ok(())
    }

    fn verify_sha256(&mut self, digest: Sha256Digest) -> bool {
        self.sink.verify_sha256(digest)
    }
}

#[async_trait]
impl<F: Fetcher> Fetcher for Progress<F> {
    async fn resolve(&self, req: &FetchRequest) -> Result<Option<Sha256Digest>, Error> {
        self.inner.resolve(req).await
    }

    async fn fetch(&self, req: &FetchRequest, sink: &mut dyn ModuleSink) -> Result<Fetched, Error> {
        if !self.enabled {
            return self.inner.fetch(req, sink).await;
        }
        let bar = ProgressBar::new_spinner();
        if let Ok(style) =
            ProgressStyle::with_template("{spinner} {msg} {bytes} ({bytes_per_sec}, {elapsed})")
        {
            bar.set_style(style);
        }
        bar.set_message(req.url.redacted());
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        let result = self
            .inner
            .fetch(req, &mut Counting { sink, bar: &bar })
            .await;
        bar.finish_and_clear();
        result
    }
}
