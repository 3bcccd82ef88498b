//! [`CacheBuilder`]: every option, with the reference's defaults.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use wasm_cache_core::{DEFAULT_MAX_MODULE_SIZE, Fetcher, Scheme};
use wasm_cache_signature::TrustPolicy;

use crate::cache::Options;
use crate::{Cache, Clock, Error, SystemClock};

/// The reference's purge interval: 10 minutes.
pub const DEFAULT_PURGE_INTERVAL: Duration = Duration::from_secs(10 * 60);
/// The reference's expiry: a module untouched for 24 hours is stale.
pub const DEFAULT_EXPIRY: Duration = Duration::from_secs(24 * 60 * 60);
/// How long a module handed out is safe from eviction: 5 minutes.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(5 * 60);
/// Set (to anything but `0` or empty) to turn the directory watch off: the
/// default of [`CacheBuilder::watch_directory`].
pub const NO_WATCH_ENV: &str = "WASM_CACHE_NO_WATCH";

/// Builds a [`Cache`]. Defaults: purge every 10 minutes, expiry 24 hours, no
/// byte budget, 5-minute eviction grace, 256 MiB module limit, our HTTP(S)
/// and OCI fetchers with no insecure hosts and the system's trust roots.
#[derive(Debug)]
#[must_use]
pub struct CacheBuilder {
    dir: PathBuf,
    purge_interval: Duration,
    expiry: Duration,
    max_bytes: Option<u64>,
    grace: Duration,
    max_module_size: u64,
    net: crate::backends::NetOptions,
    fetchers: HashMap<Scheme, Arc<dyn Fetcher>>,
    clock: Arc<dyn Clock>,
    background_purge: bool,
    default_fetchers: bool,
    trust: Option<Arc<TrustPolicy>>,
    watch: bool,
}

impl CacheBuilder {
    pub(crate) fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            purge_interval: DEFAULT_PURGE_INTERVAL,
            expiry: DEFAULT_EXPIRY,
            max_bytes: None,
            grace: DEFAULT_GRACE,
            max_module_size: DEFAULT_MAX_MODULE_SIZE,
            net: crate::backends::NetOptions::default(),
            fetchers: HashMap::new(),
            clock: Arc::new(SystemClock),
            background_purge: true,
            default_fetchers: true,
            trust: None,
            watch: std::env::var_os(NO_WATCH_ENV).is_none_or(|v| v.is_empty() || v == "0"),
        }
    }

    /// Whether hits may rely on a watch of the module directory (inotify)
    /// instead of checking the module file with a `stat` each time (default:
    /// on, unless the `WASM_CACHE_NO_WATCH` environment variable is set).
    /// Either way a module file deleted, renamed away or replaced behind the
    /// cache's back is not handed out once the change is visible: with the
    /// watch, from the moment its event is read (microseconds later); with
    /// the stat, from the next hit. The watch is skipped by itself where it
    /// cannot work (inotify limits reached, network and FUSE file systems) and
    /// dropped if lost (the directory moved or deleted); turn it off for a
    /// file system the cache does not recognise whose changes raise no
    /// inotify event. Off for one cache of a directory is off for every
    /// cache of that directory in the process (they share one store).
    pub fn watch_directory(mut self, on: bool) -> Self {
        self.watch = on;
        self
    }

    /// How often the background task purges.
    pub fn purge_interval(mut self, every: Duration) -> Self {
        self.purge_interval = every;
        self
    }

    /// How long an unused module stays (counted from its last `get`).
    pub fn expiry(mut self, expiry: Duration) -> Self {
        self.expiry = expiry;
        self
    }

    /// A byte budget: above it, least recently used modules are evicted,
    /// except those used within the grace period.
    pub fn max_bytes(mut self, budget: Option<u64>) -> Self {
        self.max_bytes = budget;
        self
    }

    /// How long a module handed out is safe from eviction.
    pub fn eviction_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// The largest module accepted (after unboxing); more is an error.
    pub fn max_module_size(mut self, bytes: u64) -> Self {
        self.max_module_size = bytes;
        self
    }

    /// Hosts reached without TLS certificate verification by our default
    /// fetchers (registries: plain HTTP allowed too), in the one syntax of
    /// `wasm_fetch_transport::InsecureHosts`: `host:port`, `host` for any
    /// port, or `*` for all. Adds to the list, like the fetcher builders'
    /// `insecure_hosts`.
    pub fn insecure_hosts<I, S>(mut self, hosts: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.net.insecure.extend(hosts.into_iter().map(Into::into));
        self
    }

    /// The former name of [`CacheBuilder::insecure_hosts`]; unlike it, it
    /// replaces the list instead of adding to it.
    #[deprecated(
        since = "0.1.0",
        note = "use `insecure_hosts` (one name across the builders)"
    )]
    pub fn insecure_registries<I, S>(mut self, hosts: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.net.insecure.clear();
        self.insecure_hosts(hosts)
    }

    /// Also trusts the CA certificates in this PEM file (our default
    /// fetchers; read once, by [`CacheBuilder::build`]). Adds to the trusted
    /// set; call it once per file.
    pub fn ca_file(mut self, path: impl AsRef<Path>) -> Self {
        self.net.ca_files.push(path.as_ref().to_owned());
        self
    }

    /// Also trusts the CA certificates in these PEM bytes (our default fetchers).
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.net.ca_pems.push(pem.into());
        self
    }

    /// Adds a mirror (a pull-through cache) of an OCI `registry` at `url`,
    /// for our default OCI fetcher: the registry's mirrors are asked in the
    /// order added, the registry itself last, like containerd's `hosts.toml`.
    /// Anything pulled by digest may come from any of them (it is checked
    /// against the digest; wrong bytes move on to the next source and are
    /// never stored); a tag is resolved at the first mirror that answers,
    /// moving on when a mirror cannot be reached, answers 5xx or 404, all
    /// within the request's one timeout. Requests to a mirror use the
    /// registry's repository path with `?ns=<registry>`. See
    /// [`mirror_with`](Self::mirror_with) for TLS and credential settings.
    ///
    /// ```
    /// # async fn demo(dir: &std::path::Path) -> Result<(), wasm_cache::Error> {
    /// let cache = wasm_cache::Cache::builder(dir)
    ///     .mirror("ghcr.io", "https://mirror.local:5000")
    ///     .build()
    ///     .await?;
    /// # cache.shutdown().await
    /// # }
    /// ```
    #[cfg(feature = "oci")]
    pub fn mirror(self, registry: impl Into<String>, url: impl Into<String>) -> Self {
        self.mirror_with(registry, crate::Mirror::new(url))
    }

    /// Adds a mirror of `registry` with its own settings (`insecure`, a CA
    /// bundle, credentials): see [`Mirror`](crate::Mirror).
    #[cfg(feature = "oci")]
    pub fn mirror_with(mut self, registry: impl Into<String>, mirror: crate::Mirror) -> Self {
        self.net.mirrors.push((registry.into(), mirror));
        self
    }

    /// Uses `fetcher` for `scheme`, replacing ours (or adding one).
    pub fn fetcher(mut self, scheme: Scheme, fetcher: Arc<dyn Fetcher>) -> Self {
        self.fetchers.insert(scheme, fetcher);
        self
    }

    /// The clock (tests use [`ManualClock`](crate::ManualClock)).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The trust policy of requests that set none
    /// ([`GetRequest::verify_with`](crate::GetRequest::verify_with)); default none.
    pub fn trust_policy(mut self, policy: Option<TrustPolicy>) -> Self {
        self.trust = policy.map(Arc::new);
        self
    }

    /// Whether to run the periodic purge task (default true). Without it,
    /// call [`Cache::purge`] yourself (the CLI does).
    pub fn background_purge(mut self, on: bool) -> Self {
        self.background_purge = on;
        self
    }

    /// Whether to build our fetchers for schemes not given with
    /// [`CacheBuilder::fetcher`] (default true). Without them, such URLs fail
    /// with `unsupported Wasm module downloading URL scheme`. A short-lived
    /// process that knows its URL (the CLI) saves building fetchers (and
    /// loading trust roots) it will not use.
    pub fn default_fetchers(mut self, on: bool) -> Self {
        self.default_fetchers = on;
        self
    }

    /// Opens the directory (creating it), recovers the index from it, checks
    /// the options of the default fetchers not replaced (which are built on
    /// their first use, so a cache that only hits builds none and loads no
    /// trust roots), and starts the purge task. Must be called within a tokio
    /// runtime.
    ///
    /// # Errors
    /// [`Error::Fetch`] with `InvalidConfig` for a bad option (zero interval,
    /// unreadable CA file...), [`Error::Store`] if the directory cannot be used.
    pub async fn build(self) -> Result<Cache, Error> {
        if self.purge_interval.is_zero() {
            return Err(config("purge interval must be more than zero"));
        }
        if self.max_module_size == 0 {
            return Err(config("maximum module size must be more than zero"));
        }
        #[cfg_attr(
            not(any(feature = "http", feature = "oci")),
            allow(unused_mut, reason = "no default fetcher to add")
        )]
        let mut fetchers = self.fetchers;
        #[cfg(feature = "http")]
        let needs_http = self.default_fetchers
            && (!fetchers.contains_key(&Scheme::Http) || !fetchers.contains_key(&Scheme::Https));
        #[cfg(feature = "http")]
        if needs_http {
            let http: Arc<dyn Fetcher> = Arc::new(crate::backends::http(&self.net)?);
            fetchers
                .entry(Scheme::Http)
                .or_insert_with(|| Arc::clone(&http));
            fetchers.entry(Scheme::Https).or_insert(http);
        }
        #[cfg(feature = "oci")]
        if let std::collections::hash_map::Entry::Vacant(slot) = fetchers.entry(Scheme::Oci)
            && self.default_fetchers
        {
            let oci = crate::backends::oci(&self.net)?;
            slot.insert(Arc::new(oci));
        }
        let opts = Options {
            purge_interval: self.purge_interval,
            expiry: self.expiry,
            max_bytes: self.max_bytes,
            grace: self.grace,
            max_module_size: self.max_module_size,
            trust: self.trust,
            watch: self.watch,
        };
        Cache::open(self.dir, fetchers, self.clock, opts, self.background_purge).await
    }
}

fn config(reason: &str) -> Error {
    wasm_cache_core::Error::InvalidConfig {
        reason: reason.to_owned(),
    }
    .into()
}

#[cfg(all(test, feature = "http", feature = "oci"))]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tls_options_reach_the_default_fetchers() {
        let dir = tempfile::tempdir().unwrap();
        // ca_file adds (each file is read by build); a missing one is named.
        let e = Cache::builder(dir.path())
            .background_purge(false)
            .ca_file("/nonexistent/one.pem")
            .build()
            .await
            .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/one.pem"), "{e}");
        let e = Cache::builder(dir.path())
            .background_purge(false)
            .ca_pem(b"not a certificate".to_vec())
            .build()
            .await
            .unwrap_err();
        assert_eq!(e.kind(), wasm_cache_core::ErrorKind::InvalidInput, "{e}");
        // One syntax for insecure hosts: a URL is refused, a host:port is not.
        let e = Cache::builder(dir.path())
            .background_purge(false)
            .insecure_hosts(["http://h:5000/"])
            .build()
            .await
            .unwrap_err();
        assert_eq!(e.kind(), wasm_cache_core::ErrorKind::InvalidInput, "{e}");
        let cache = Cache::builder(dir.path())
            .background_purge(false)
            .insecure_hosts(["127.0.0.1:5000"])
            .insecure_hosts(["localhost"])
            .build()
            .await
            .unwrap();
        cache.shutdown().await.unwrap();
    }

    #[test]
    #[allow(deprecated, reason = "the old name must keep compiling")]
    fn the_old_name_still_compiles_and_replaces() {
        let b = CacheBuilder::new(PathBuf::from("/unused"))
            .insecure_hosts(["a:1"])
            .insecure_registries(["b:2"]);
        assert_eq!(b.net.insecure, ["b:2"]);
        let b = b.insecure_hosts(["c:3"]);
        assert_eq!(b.net.insecure, ["b:2", "c:3"]);
        let _ = wasm_fetch_oci::OciFetcher::builder().insecure_registries(["b:2"]);
    }
}
