//! A `Fetcher` layer that shows download progress on a terminal.

use std::time::Duration;

use async_trait::async_trait;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use wasm_cache_core::{
    Error, FetchRequest, Fetched, Fetcher, ModuleSink, Sha256Digest, Signatures,
};

/// The bar when the module's size is known.
const BAR: &str =
    "{msg} [{wide_bar}] {bytes}/{total_bytes} {percent:>3}% {binary_bytes_per_sec} ETA {eta}";
/// The spinner when it is not (a gzip or tar body, a chunked response).
const SPINNER: &str = "{spinner} {msg} {bytes} ({binary_bytes_per_sec}, {elapsed})";

/// Wraps a fetcher; when enabled (stderr is a terminal and `-q` was not
/// given), a bar with total, percent, rate and ETA follows each download
/// whose size is known, a spinner with bytes and rate the others.
#[derive(Debug)]
pub(crate) struct Progress<F> {
    inner: F,
    enabled: bool,
}

impl<F> Progress<F> {
    pub(crate) fn new(inner: F, enabled: bool) -> Self {
        Self { inner, enabled }
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

    fn size_hint(&mut self, len: u64) {
        self.sink.size_hint(len);
        if let Ok(style) = ProgressStyle::with_template(BAR) {
            self.bar.set_style(style.progress_chars("=> "));
        }
        self.bar.set_length(len);
    }

    fn verify_sha256(&mut self, digest: Sha256Digest) -> bool {
        self.sink.verify_sha256(digest)
    }

    fn restart(&mut self) -> bool {
        let restarted = self.sink.restart();
        if restarted {
            self.bar.set_position(0);
        }
        restarted
    }
}

#[async_trait]
impl<F: Fetcher> Fetcher for Progress<F> {
    async fn resolve(&self, req: &FetchRequest) -> Result<Option<Sha256Digest>, Error> {
        self.inner.resolve(req).await
    }

    async fn signatures(
        &self,
        req: &FetchRequest,
        digest: &Sha256Digest,
    ) -> Result<Signatures, Error> {
        self.inner.signatures(req, digest).await
    }

    async fn fetch(&self, req: &FetchRequest, sink: &mut dyn ModuleSink) -> Result<Fetched, Error> {
        if !self.enabled {
            return self.inner.fetch(req, sink).await;
        }
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(SPINNER) {
            bar.set_style(style);
        }
        bar.set_message(req.url.redacted());
        bar.enable_steady_tick(Duration::from_millis(100));
        crate::logging::set_active_bar(Some(bar.clone()));
        let result = self
            .inner
            .fetch(req, &mut Counting { sink, bar: &bar })
            .await;
        crate::logging::set_active_bar(None);
        bar.finish_and_clear();
        result
    }
}
