//! [`LazyFetcher`]: a fetcher built on its first use.

use std::fmt;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use wasm_cache_core::{
    Error, FetchRequest, Fetched, Fetcher, ModuleSink, Sha256Digest, Signatures,
};

type Make = Box<dyn Fn() -> Result<Arc<dyn Fetcher>, Error> + Send + Sync>;

/// A [`Fetcher`] that builds the real one the first time it is asked to
/// resolve, fetch or fetch signatures, and then delegates to it.
///
/// Building a network fetcher costs little but its first HTTPS request loads
/// the system's trust roots, and a process that only hits (a CLI run that
/// finds its module cached) should pay for neither. The cache builder wraps
/// its default fetchers in this; a caller building its own (the CLI does)
/// can do the same. A build error is returned by every call (as
/// [`Error::InvalidConfig`] naming the original reason); check the options
/// up front when an early error matters (the fetcher builders' `check`).
pub struct LazyFetcher {
    name: &'static str,
    make: Make,
    built: OnceLock<Result<Arc<dyn Fetcher>, String>>,
}

impl LazyFetcher {
    /// A fetcher made by `make` on first use; `name` is what `Debug` shows
    /// (`"http"`, `"oci"`).
    pub fn new<F>(name: &'static str, make: F) -> Self
    where
        F: Fn() -> Result<Arc<dyn Fetcher>, Error> + Send + Sync + 'static,
    {
        Self {
            name,
            make: Box::new(make),
            built: OnceLock::new(),
        }
    }

    /// Whether the fetcher was built (asked for at least once).
    pub fn is_built(&self) -> bool {
        self.built.get().is_some()
    }

    fn get(&self) -> Result<&Arc<dyn Fetcher>, Error> {
        self.built
            .get_or_init(|| {
                tracing::debug!(fetcher = self.name, "building the fetcher on first use");
                (self.make)().map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|reason| Error::InvalidConfig {
                reason: reason.clone(),
            })
    }
}

impl fmt::Debug for LazyFetcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.built.get() {
            Some(Ok(inner)) => f.debug_tuple("LazyFetcher").field(inner).finish(),
            Some(Err(_)) => write!(f, "LazyFetcher({}, failed to build)", self.name),
            None => write!(f, "LazyFetcher({}, not built yet)", self.name),
        }
    }
}

#[async_trait]
impl Fetcher for LazyFetcher {
    async fn resolve(&self, req: &FetchRequest) -> Result<Option<Sha256Digest>, Error> {
        self.get()?.resolve(req).await
    }

    async fn fetch(&self, req: &FetchRequest, sink: &mut dyn ModuleSink) -> Result<Fetched, Error> {
        self.get()?.fetch(req, sink).await
    }

    async fn signatures(
        &self,
        req: &FetchRequest,
        digest: &Sha256Digest,
    ) -> Result<Signatures, Error> {
        self.get()?.signatures(req, digest).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};
    use wasm_cache_conformance::MemoryFetcher;
    use wasm_cache_core::ModuleUrl;

    #[tokio::test]
    async fn builds_once_on_first_use_and_delegates() {
        let built = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&built);
        let lazy = LazyFetcher::new("memory", move || {
            counter.fetch_add(1, Ordering::SeqCst);
            let m = MemoryFetcher::new();
            m.insert(
                "https://example.com/m.wasm",
                b"\0asm\x01\0\0\0".to_vec(),
                None,
            );
            Ok(Arc::new(m) as Arc<dyn Fetcher>)
        });
        assert!(!lazy.is_built());
        assert!(format!("{lazy:?}").contains("not built"));
        assert_eq!(built.load(Ordering::SeqCst), 0);
        let req = FetchRequest::new(
            ModuleUrl::parse("https://example.com/m.wasm").unwrap(),
            Instant::now() + Duration::from_secs(5),
        );
        let mut sink = Vec::new();
        lazy.fetch(&req, &mut sink).await.unwrap();
        lazy.resolve(&req).await.unwrap();
        assert_eq!(sink, b"\0asm\x01\0\0\0");
        assert_eq!(built.load(Ordering::SeqCst), 1);
        assert!(lazy.is_built());
    }

    #[tokio::test]
    async fn a_build_error_is_every_call_s_error() {
        let lazy = LazyFetcher::new("broken", || {
            Err(Error::InvalidConfig {
                reason: "cannot read CA file /x.pem".into(),
            })
        });
        let req = FetchRequest::new(
            ModuleUrl::parse("https://example.com/m.wasm").unwrap(),
            Instant::now() + Duration::from_secs(5),
        );
        for _ in 0..2 {
            let e = lazy.resolve(&req).await.unwrap_err();
            assert!(matches!(e, Error::InvalidConfig { .. }), "{e}");
            assert!(e.to_string().contains("/x.pem"), "{e}");
        }
        assert!(format!("{lazy:?}").contains("failed"));
    }
}
