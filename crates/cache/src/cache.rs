//! The composed cache: lookup, single flight, fetch into the store, purge.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tokio::sync::{OnceCell, watch};
use tokio::task::JoinHandle;
use tracing::{Instrument, debug, info, warn};
use wasm_cache_core::{
    EntryInfo, FetchRequest, Fetcher, Index, IndexEvent, Lookup, LookupRequest, ModuleKey,
    ModuleUrl, PullSecret, Removed, Scheme, Sha256Digest, Signatures, Timestamp,
};
use wasm_cache_signature::{CosignLayer, KeyFingerprint, Subject, TrustPolicy};
use wasm_store_fs::{FsStore, Journal, StoreError, VerifyReport};

use crate::metrics::{FetchResult, Meters};
use crate::outcome::{Outcome, Resolved};
use crate::{CacheBuilder, Clock, Error, GetRequest};

/// The journal file, beside the modules.
pub(crate) const JOURNAL_FILE: &str = "index.journal";

/// Stripes of the lock that orders "publish a module" against "delete its file".
const PUBLISH_STRIPES: usize = 64;

/// A verified, content-addressed local cache of Wasm modules.
///
/// Cheap to clone (clones share one cache). Build one with [`Cache::builder`];
/// stop it with [`Cache::shutdown`] (the reference's `Cleanup`).
#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("dir", &self.inner.store.dir())
            .field("entries", &self.inner.index.len())
            .finish_non_exhaustive()
    }
}

/// The outcome of one fetch, shared by every caller of a single flight.
#[derive(Debug, Clone)]
struct Published {
    path: PathBuf,
    checksum: Sha256Digest,
    key: ModuleKey,
    /// The sha256 of the module's bytes.
    content: Sha256Digest,
    /// Whether this flight downloaded it (`false`: found in the cache).
    downloaded: bool,
}

type Flight = Arc<OnceCell<Result<Published, Error>>>;

/// What callers must have in common to share one download and its outcome:
/// the URL, the checksum it must have, and the credentials it is fetched
/// with (a caller with a valid pull secret must never receive the failure of
/// a caller with a wrong one, nor the reverse), and the trust policy (a
/// caller without one must never receive another's signature failure, and
/// a caller with one never a module no key of its policy verified).
type FlightKey = (
    String,
    Option<Sha256Digest>,
    Option<PullSecret>,
    Option<(Vec<KeyFingerprint>, bool)>,
);

/// The outcome of [`Inner::try_hit`].
enum Hit {
    /// Served from the cache.
    Served(Published),
    /// Not cached (or its file vanished or failed verification): fetch it
    /// under this module name, checking this checksum if one is pinned.
    Miss {
        name: String,
        expected: Option<Sha256Digest>,
    },
}

pub(crate) struct Options {
    pub(crate) purge_interval: Duration,
    pub(crate) expiry: Duration,
    pub(crate) max_bytes: Option<u64>,
    pub(crate) grace: Duration,
    pub(crate) max_module_size: u64,
    pub(crate) trust: Option<Arc<TrustPolicy>>,
}

struct Inner {
    store: FsStore,
    index: Index,
    journal: Journal<IndexEvent>,
    /// Appends hold it shared; a flush holds it exclusively from its snapshot
    /// of the index to the end of the compaction, so no append made after the
    /// snapshot can be lost by the file replacement.
    journal_gate: std::sync::RwLock<()>,
    fetchers: HashMap<Scheme, Arc<dyn Fetcher>>,
    clock: Arc<dyn Clock>,
    opts: Options,
    flights: DashMap<FlightKey, Flight>,
    /// Parsed URLs by their text: a config push asks for the same few URLs
    /// over and over, and parsing was a third of a hit's CPU time.
    parsed: DashMap<String, Arc<ModuleUrl>>,
    meters: Meters,
    /// Which keys verified which digest (the manifest digest for OCI, the
    /// module's sha256 otherwise), so a hit under a policy needs no round trip.
    verified: DashMap<Sha256Digest, Vec<KeyFingerprint>>,
    /// Content recovered from disk and not yet re-hashed in this process.
    unverified: DashMap<Sha256Digest, ()>,
    /// Files in the store that no entry references (e.g. a crash between
    /// commit and journal append); deleted once older than the expiry.
    orphans: Mutex<HashSet<Sha256Digest>>,
    publish: [Mutex<()>; PUBLISH_STRIPES],
    closed: AtomicBool,
    task: Mutex<Option<(JoinHandle<()>, watch::Sender<bool>)>>,
    /// A byte-budget purge asked for by a fetch and not started yet: fetches
    /// that go over the budget meanwhile share it instead of queueing more.
    budget_purge_queued: AtomicBool,
    /// Byte-budget purges started by fetches; shutdown waits for them.
    budget_purges: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some((task, stop)) = lock(&self.task).take() {
            let _ = stop.send(true);
            task.abort();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What one purge did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PurgeReport {
    /// Entries removed because they were idle longer than the expiry.
    pub expired: Vec<ModuleKey>,
    /// Entries removed to fit the byte budget.
    pub evicted: Vec<ModuleKey>,
    /// Module files deleted.
    pub files_removed: usize,
    /// Files whose removal failed (their entries were kept).
    pub failures: usize,
}

impl Cache {
    /// A builder for a cache storing modules in `dir`.
    pub fn builder(dir: impl Into<PathBuf>) -> CacheBuilder {
        CacheBuilder::new(dir.into())
    }

    pub(crate) async fn open(
        dir: PathBuf,
        fetchers: HashMap<Scheme, Arc<dyn Fetcher>>,
        clock: Arc<dyn Clock>,
        opts: Options,
        background: bool,
    ) -> Result<Self, Error> {
        let (store, index, journal, unverified, orphans) =
            tokio::task::spawn_blocking(move || recover(&dir))
                .await
                .map_err(|e| Error::Internal(format!("recovery task failed: {e}")))??;
        let inner = Arc::new(Inner {
            store,
            index,
            journal,
            journal_gate: std::sync::RwLock::new(()),
            fetchers,
            clock,
            opts,
            flights: DashMap::new(),
            parsed: DashMap::new(),
            meters: Meters::new(),
            verified: DashMap::new(),
            unverified,
            orphans: Mutex::new(orphans),
            publish: std::array::from_fn(|_| Mutex::new(())),
            closed: AtomicBool::new(false),
            task: Mutex::new(None),
            budget_purge_queued: AtomicBool::new(false),
            budget_purges: Mutex::new(Vec::new()),
        });
        inner.meters.entries(inner.index.len());
        if background {
            let (stop_tx, stop_rx) = watch::channel(false);
            let task = tokio::spawn(purge_loop(
                Arc::downgrade(&inner),
                inner.opts.purge_interval,
                stop_rx,
            ));
            *lock(&inner.task) = Some((task, stop_tx));
        }
        Ok(Self { inner })
    }

    /// The directory holding the modules.
    pub fn dir(&self) -> &Path {
        self.inner.store.dir()
    }

    /// The reference's `Get`: the path of a local, verified Wasm module for
    /// the request, fetching it if the cache and the pull policy require.
    ///
    /// # Errors
    /// [`Error::Fetch`] with the reference's wording (unsupported scheme,
    /// unparseable URL, download failures, checksum mismatch, invalid module),
    /// [`Error::Store`] for local storage failures, [`Error::ShutDown`] after
    /// [`Cache::shutdown`].
    pub async fn get(&self, req: &GetRequest) -> Result<PathBuf, Error> {
        self.get_detailed(req).await.map(|o| o.path)
    }

    /// [`Cache::get`], reporting more than the path: the module's sha256 and
    /// size, the manifest digest for content-addressed sources and whether the
    /// module was already cached. Same rules, same errors.
    ///
    /// # Errors
    /// As [`Cache::get`].
    pub async fn get_detailed(&self, req: &GetRequest) -> Result<Outcome, Error> {
        let inner = &self.inner;
        if inner.closed.load(Ordering::Acquire) {
            return Err(Error::ShutDown);
        }
        let url = inner.parse_url(&req.url)?;
        let url = &*url;
        let checksum = match req.checksum.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(c) => Some(Sha256Digest::parse(c)?),
        };
        let policy = req.trust.as_ref().or(inner.opts.trust.as_ref());
        let (name, expected) = match inner.try_hit(url, checksum, req, policy).await? {
            Hit::Served(p) => {
                inner.meters.lookup(true);
                return Ok(Outcome::new(
                    &inner.store,
                    p.path,
                    p.checksum,
                    p.content,
                    true,
                ));
            }
            Hit::Miss { name, expected } => (name, expected),
        };
        inner.meters.lookup(false);
        // A span on the miss path only: hits stay allocation-light.
        let span = tracing::info_span!(
            "wasm_module_fetch",
            url = %url.redacted(),
            resource = %req.resource_name,
            version = %req.resource_version,
        );
        let published = self
            .single_flight(url, &name, expected, checksum, req)
            .instrument(span)
            .await?;
        // Handed out now: the entry's last use (and so its eviction grace)
        // counts from here for every caller of the flight, not only from the
        // moment the leader indexed it.
        inner.index.touch(&published.key, inner.now());
        // The leader recorded for itself; a caller that shared its download
        // records its own resource version (a no-op when it is the same).
        if url.records_checksum() {
            inner.record(url, published.checksum, req);
        }
        Ok(Outcome::new(
            &inner.store,
            published.path,
            published.checksum,
            published.content,
            !published.downloaded,
        ))
    }

    /// The digest `req.url` names now, without storing anything: for
    /// content-addressed sources (OCI) the manifest digest, asked of the
    /// registry; otherwise, only if `download` is set, the sha256 of the
    /// module, downloaded (within the module size limit) and hashed. `None`
    /// for such a URL without `download`. The pull policy, the resource and
    /// the checksum of `req` are ignored; its timeout and secret apply.
    ///
    /// # Errors
    /// As [`Cache::get`] for naming and fetching the module.
    pub async fn resolve(
        &self,
        req: &GetRequest,
        download: bool,
    ) -> Result<Option<Resolved>, Error> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::ShutDown);
        }
        let url = self.inner.parse_url(&req.url)?;
        let fetcher = self.inner.fetchers.get(&url.scheme()).ok_or_else(|| {
            wasm_cache_core::Error::UnsupportedScheme {
                scheme: url.scheme().as_str().to_owned(),
            }
        })?;
        crate::outcome::resolve(
            &**fetcher,
            &url,
            req,
            self.inner.opts.max_module_size,
            download,
        )
        .await
    }

    /// Downloads once for every concurrent caller with the same [`FlightKey`].
    ///
    /// Each caller keeps its own deadline: it stops waiting when its own
    /// timeout is over, and if the download it waited for ran out of the
    /// leader's time while it still has some, it tries again itself.
    async fn single_flight(
        &self,
        url: &ModuleUrl,
        name: &str,
        expected: Option<Sha256Digest>,
        checksum: Option<Sha256Digest>,
        req: &GetRequest,
    ) -> Result<Published, Error> {
        let deadline = tokio::time::Instant::now() + req.timeout;
        let policy = req.trust.as_ref().or(self.inner.opts.trust.as_ref());
        let key: FlightKey = (
            url.as_str().to_owned(),
            expected,
            req.pull_secret.clone(),
            policy.map(|p| (p.fingerprints(), p.requires_reference())),
        );
        loop {
            let flight = self.inner.flights.entry(key.clone()).or_default().clone();
            let led = AtomicBool::new(false);
            let waited = tokio::time::timeout_at(
                deadline,
                flight.get_or_init(|| {
                    led.store(true, Ordering::Relaxed);
                    let inner = Arc::clone(&self.inner);
                    async move {
                        // Checked again inside the flight: a flight that
                        // finished between our lookup and now has indexed and
                        // recorded the module, so this is a hit rather than a
                        // second download.
                        match inner.try_hit(url, checksum, req, policy).await? {
                            Hit::Served(p) => Ok(p),
                            Hit::Miss { .. } => {
                                inner
                                    .fetch_and_publish(url, name.to_owned(), expected, req, policy)
                                    .await
                            }
                        }
                    }
                }),
            )
            .await;
            let Ok(result) = waited else {
                // Our own deadline passed while another caller's download
                // was still running: it goes on for its own callers.
                return Err(wasm_cache_core::Error::Timeout {
                    url: url.redacted(),
                    elapsed: req.timeout,
                }
                .into());
            };
            let result = result.clone();
            self.inner
                .flights
                .remove_if(&key, |_, f| Arc::ptr_eq(f, &flight));
            let theirs_timed_out = !led.load(Ordering::Relaxed)
                && matches!(&result, Err(e) if e.kind() == wasm_cache_core::ErrorKind::Timeout);
            if theirs_timed_out && tokio::time::Instant::now() < deadline {
                debug!(url = %url, "the shared download ran out of its caller's time; trying again");
                continue;
            }
            return result;
        }
    }

    /// Applies expiry and the byte budget now.
    ///
    /// # Errors
    /// [`Error::ShutDown`] after [`Cache::shutdown`]; [`Error::Internal`] if
    /// the purge task panicked.
    pub async fn purge(&self) -> Result<PurgeReport, Error> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::ShutDown);
        }
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || inner.purge())
            .await
            .map_err(|e| Error::Internal(format!("purge task failed: {e}")))
    }

    /// Snapshots of every entry.
    pub fn entries(&self) -> Vec<EntryInfo> {
        self.inner.index.entries()
    }

    /// The checksum remembered for `url`, with the resource versions that saw it.
    pub fn checksum_record(&self, url: &str) -> Option<wasm_cache_core::ChecksumRecord> {
        self.inner.index.checksum_record(url)
    }

    /// Where the module file of content `digest` is (or would be).
    pub fn module_path(&self, content: &Sha256Digest) -> PathBuf {
        self.inner.store.path_of(content)
    }

    /// Re-hashes every module file. With `repair`, a file that does not hold
    /// what its name says is deleted together with every entry that refers to
    /// it, under the same lock that orders publishing against deleting, so a
    /// `get` never receives a path whose file a repair is removing, and the
    /// index never refers to a file a repair removed.
    ///
    /// # Errors
    /// [`Error::Store`] when a file cannot be read or deleted;
    /// [`Error::ShutDown`] after [`Cache::shutdown`].
    pub async fn verify(&self, repair: bool) -> Result<VerifyReport, Error> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::ShutDown);
        }
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || inner.verify_all(repair))
            .await
            .map_err(|e| Error::Internal(format!("verify task failed: {e}")))?
    }

    /// The reference's `Cleanup`: stops the background purge task (waiting for
    /// it), refuses further `get`s, and writes the index to the journal.
    /// Idempotent.
    ///
    /// # Errors
    /// [`Error::Store`] if the final journal write fails.
    pub async fn shutdown(&self) -> Result<(), Error> {
        self.inner.closed.store(true, Ordering::Release);
        let task = lock(&self.inner.task).take();
        if let Some((task, stop)) = task {
            let _ = stop.send(true);
            if let Err(e) = task.await
                && !e.is_cancelled()
            {
                return Err(Error::Internal(format!("purge task failed: {e}")));
            }
        }
        let purges = std::mem::take(&mut *lock(&self.inner.budget_purges));
        for purge in purges {
            if let Err(e) = purge.await {
                return Err(Error::Internal(format!("purge task failed: {e}")));
            }
        }
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || inner.flush())
            .await
            .map_err(|e| Error::Internal(format!("flush task failed: {e}")))?
    }

    /// Whether the background purge task is running.
    pub fn purge_task_running(&self) -> bool {
        lock(&self.inner.task)
            .as_ref()
            .is_some_and(|(t, _)| !t.is_finished())
    }
}

async fn purge_loop(inner: Weak<Inner>, interval: Duration, mut stop: watch::Receiver<bool>) {
    let start = tokio::time::Instant::now() + interval;
    let mut tick = tokio::time::interval_at(start, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let Some(inner) = inner.upgrade() else { return };
                let done = tokio::task::spawn_blocking(move || inner.purge()).await;
                if let Err(e) = done {
                    warn!(error = %e, "wasm cache purge failed");
                }
            }
            _ = stop.changed() => return,
        }
    }
}

type Recovered = (
    FsStore,
    Index,
    Journal<IndexEvent>,
    DashMap<Sha256Digest, ()>,
    HashSet<Sha256Digest>,
);

/// Opens the store and the journal, and rebuilds the index from both: entries
/// whose file is gone are dropped, files no entry references are orphans.
fn recover(dir: &Path) -> Result<Recovered, Error> {
    let (store, report) = FsStore::open(dir)?;
    if !report.ignored.is_empty() {
        warn!(count = report.ignored.len(), dir = %dir.display(), "ignored files that are not modules");
    }
    let journal = Journal::open(dir.join(JOURNAL_FILE))?;
    let index = Index::new();
    let replayed = journal.replay()?;
    for event in &replayed {
        index.apply(event);
    }
    let on_disk: HashMap<Sha256Digest, bool> = store
        .list()
        .into_iter()
        .map(|m| (m.digest, m.verified))
        .collect();
    for e in index.entries() {
        if !on_disk.contains_key(&e.content) {
            debug!(module = %e.key.redacted_name(), "dropping an entry whose file is gone");
            index.remove(&e.key);
        }
    }
    // One pass over the entries: `Index::content_in_use` scans them all, and
    // calling it per file made opening a store of n modules O(n^2).
    let in_use: HashSet<Sha256Digest> = index.entries().iter().map(|e| e.content).collect();
    let unverified = DashMap::new();
    let mut orphans = HashSet::new();
    for (digest, verified) in on_disk {
        if !in_use.contains(&digest) {
            orphans.insert(digest);
        } else if !verified {
            unverified.insert(digest, ());
        }
    }
    info!(entries = index.len(), orphans = orphans.len(), dir = %dir.display(), "wasm cache opened");
    // Start the journal afresh from what survived, unless it already says
    // exactly that (as after a clean shutdown): a rewrite is an fsync and a
    // rename on every start of a short-lived process like the CLI.
    let events = index.to_events();
    if replayed != events {
        journal.compact(&events)?;
    }
    Ok((store, index, journal, unverified, orphans))
}

/// How many parsed URLs [`Inner::parse_url`] keeps before starting afresh.
const PARSED_URLS: usize = 16_384;

impl Inner {
    /// [`ModuleUrl::parse`], remembered for URLs seen before (errors are not).
    fn parse_url(&self, raw: &str) -> Result<Arc<ModuleUrl>, wasm_cache_core::Error> {
        if let Some(u) = self.parsed.get(raw) {
            return Ok(Arc::clone(u.value()));
        }
        let url = Arc::new(ModuleUrl::parse(raw)?);
        if self.parsed.len() >= PARSED_URLS {
            self.parsed.clear();
        }
        self.parsed.insert(raw.to_owned(), Arc::clone(&url));
        Ok(url)
    }

    /// REFERENCE §3 steps 1-4 and the existence check. A hit records the
    /// checksum for the URL and the asking resource's version, exactly as a
    /// download does (§3.4, Istio's `touchEntry`); that writes to the journal
    /// only when the record changed.
    ///
    /// Under a trust policy, a hit is served only once the digest is verified
    /// (recorded earlier, or checked now by fetching the signature only), and
    /// a hit that fails records nothing.
    async fn try_hit(
        self: &Arc<Self>,
        url: &ModuleUrl,
        checksum: Option<Sha256Digest>,
        req: &GetRequest,
        policy: Option<&Arc<TrustPolicy>>,
    ) -> Result<Hit, Error> {
        let lookup = LookupRequest::new(
            url,
            checksum,
            &req.resource_name,
            &req.resource_version,
            req.pull_policy,
        );
        Ok(match self.index.lookup(&lookup, self.now()) {
            Lookup::Hit { key, content } => match self.serve(&key, content).await? {
                Some(path) => {
                    if let Some(policy) = policy {
                        let deadline = Instant::now() + req.timeout;
                        self.ensure_verified(url, key.checksum, policy, req, deadline)
                            .await?;
                    }
                    if let Some(event) = self.index.record_hit(&lookup, &key) {
                        self.journal_append(&event);
                    }
                    Hit::Served(Published {
                        path,
                        checksum: key.checksum,
                        key,
                        content,
                        downloaded: false,
                    })
                }
                None => Hit::Miss {
                    name: key.name,
                    expected: checksum.or_else(|| url.pinned_digest()),
                },
            },
            Lookup::Miss { name, expected } => Hit::Miss { name, expected },
            other => {
                return Err(Error::Internal(format!(
                    "unknown index lookup outcome {other:?}"
                )));
            }
        })
    }

    fn now(&self) -> Timestamp {
        Timestamp::from_system_time(self.clock.now())
    }

    fn publish_lock(&self, content: &Sha256Digest) -> std::sync::MutexGuard<'_, ()> {
        lock(&self.publish[usize::from(content.as_bytes()[0]) % PUBLISH_STRIPES])
    }

    /// The path of the entry's file if it can be served: re-hashed once if it
    /// was recovered from disk, and still there. Otherwise the entry is
    /// dropped and `None` returned (a miss, never a dangling path).
    async fn serve(
        self: &Arc<Self>,
        key: &ModuleKey,
        content: Sha256Digest,
    ) -> Result<Option<PathBuf>, Error> {
        if self.unverified.contains_key(&content) {
            let me = Arc::clone(self);
            let ok = tokio::task::spawn_blocking(move || me.store.verify(&content))
                .await
                .map_err(|e| Error::Internal(format!("verify task failed: {e}")))?;
            match ok {
                Ok(true) => {
                    self.unverified.remove(&content);
                }
                Ok(false) | Err(StoreError::NotFound { .. }) => {
                    warn!(module = %key.redacted_name(), content = %content, "cached module failed verification; fetching again");
                    self.drop_content(&content);
                    return Ok(None);
                }
                Err(e) => return Err(e.into()),
            }
        }
        let path = self.store.path_of(&content);
        if self.store.contains(&content) {
            return Ok(Some(path));
        }
        warn!(module = %key.redacted_name(), path = %path.display(), "cached module file vanished; fetching again");
        self.forget(key);
        Ok(None)
    }

    /// Drops an entry from the index (and journal), leaving files alone.
    fn forget(&self, key: &ModuleKey) {
        if self.index.remove(key).is_some() {
            self.journal_append(&IndexEvent::Remove { key: key.clone() });
            self.meters.entries(self.index.len());
        }
    }

    /// Drops every entry of a content digest and its file.
    fn drop_content(&self, content: &Sha256Digest) {
        let _guard = self.publish_lock(content);
        if let Err(e) = self.drop_content_locked(content) {
            warn!(error = %e, "removing a corrupt module failed");
        }
    }

    /// [`Inner::drop_content`] for a caller holding the content's publish
    /// lock; whether a file was removed.
    fn drop_content_locked(&self, content: &Sha256Digest) -> Result<bool, StoreError> {
        for e in self.index.entries() {
            if e.content == *content {
                self.forget(&e.key);
            }
        }
        self.unverified.remove(content);
        lock(&self.orphans).remove(content);
        self.store.remove(content)
    }

    fn journal_append(&self, event: &IndexEvent) {
        let _shared = self
            .journal_gate
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        if let Err(e) = self.journal.append(event) {
            // The module is served from memory all the same; a restart would
            // treat its file as an orphan.
            warn!(error = %e, "appending to the wasm cache journal failed");
        }
    }

    /// REFERENCE §3 step 7 for `url`; journaled only when the record changed.
    fn record(&self, url: &ModuleUrl, checksum: Sha256Digest, req: &GetRequest) {
        let changed = self.index.record_checksum(
            url.as_str(),
            checksum,
            &req.resource_name,
            &req.resource_version,
        );
        if !changed {
            return;
        }
        self.journal_append(&IndexEvent::Record {
            url: url.as_str().to_owned(),
            checksum,
            resource_name: req.resource_name.clone(),
            resource_version: req.resource_version.clone(),
        });
    }

    async fn fetch_and_publish(
        self: Arc<Self>,
        url: &ModuleUrl,
        name: String,
        expected: Option<Sha256Digest>,
        req: &GetRequest,
        policy: Option<&Arc<TrustPolicy>>,
    ) -> Result<Published, Error> {
        let scheme = url.scheme();
        let fetcher = self.fetchers.get(&scheme).ok_or_else(|| {
            wasm_cache_core::Error::UnsupportedScheme {
                scheme: scheme.as_str().to_owned(),
            }
        })?;
        let deadline = Instant::now() + req.timeout;
        let mut freq = FetchRequest::new(url.clone(), deadline)
            .with_pull_secret(req.pull_secret.clone())
            .with_max_size(self.opts.max_module_size);
        let resolved = fetcher.resolve(&freq).await.inspect_err(|e| {
            debug!(url = %url, error = %e, "resolve failed");
            self.meters.fetch(FetchResult::ManifestFailure);
        })?;
        if let Some(digest) = resolved {
            if let Some(want) = expected.filter(|w| *w != digest) {
                self.meters.fetch(FetchResult::ChecksumMismatched);
                return Err(wasm_cache_core::Error::ChecksumMismatch {
                    url: url.redacted(),
                    actual: digest.to_hex(),
                    expected: want.to_hex(),
                }
                .into());
            }
            // Under a trust policy the manifest digest is verified before
            // anything is served or downloaded: a failure fetches no layer.
            if let Some(policy) = policy {
                self.ensure_verified(url, digest, policy, req, deadline)
                    .await?;
            }
            // REFERENCE §3 step 5: look again before downloading any layer.
            let key = ModuleKey::new(name.clone(), digest);
            if let Some(content) = self.index.touch(&key, self.now())
                && let Some(path) = self.serve(&key, content).await?
            {
                if url.records_checksum() {
                    self.record(url, digest, req);
                }
                return Ok(Published {
                    path,
                    checksum: digest,
                    key,
                    content,
                    downloaded: false,
                });
            }
            freq = freq.with_digest(Some(digest));
        }
        // Content-addressed sources are checked by digest above; otherwise the
        // store checks the module's own hash.
        let store_expected = if resolved.is_none() { expected } else { None };
        let mut ingest = self
            .store
            .ingest(store_expected, self.opts.max_module_size)
            .inspect_err(|_| self.meters.fetch(FetchResult::FetchFailure))?;
        let mut sink = VerifyingSink {
            ingest: &mut ingest,
            content: None,
        };
        let fetched = fetcher.fetch(&freq, &mut sink).await;
        let content_expected = sink.content;
        // A fetcher that handed the content digest check to us (an OCI raw
        // layer: its digest is the module's) gets it here, from the store's
        // own hash: one SHA-256 pass over the bytes.
        let fetched = fetched.and_then(|f| match content_expected {
            Some(want) if ingest.digest() != want => Err(wasm_cache_core::Error::DigestMismatch {
                url: url.redacted(),
                expected: want.to_prefixed(),
                actual: ingest.digest().to_prefixed(),
            }),
            _ => Ok(f),
        });
        let fetched = match fetched {
            Ok(f) => f,
            Err(e) => {
                // A limit or check of the store surfaces as a sink error; report it as itself.
                let e = match ingest.into_error() {
                    Some(store_err) => store_err.into_core_error(&url.redacted()),
                    None => e,
                };
                self.meters.fetch(result_label(&e));
                debug!(url = %url, error = %e, "fetch failed");
                return Err(e.into());
            }
        };
        // Not content-addressed: the module's own sha256 is the signed digest,
        // known only now that it is hashed; verified before the commit, so a
        // failure leaves nothing in the store (the temporary file is dropped).
        if resolved.is_none()
            && let Some(policy) = policy
        {
            self.ensure_verified(url, ingest.digest(), policy, req, deadline)
                .await?;
        }
        let me = Arc::clone(&self);
        let url_s = url.as_str().to_owned();
        let redacted = url.redacted();
        let published = tokio::task::spawn_blocking(move || {
            // Commit and index under the content's publish lock, so a purge
            // cannot delete the file between the two (a commit that finds the
            // file already in place must not lose it to a purge that saw no
            // entry for it before the index insert).
            let _guard = me.publish_lock(&ingest.digest());
            let committed = ingest.commit().map_err(|e| e.into_core_error(&redacted))?;
            // Read after the commit (an fsync can take a while): a caller that
            // missed while it ran and waits for this flight asked no earlier
            // than this, so its grace period is counted from its own request.
            let now = me.now();
            let checksum = resolved.or(fetched.digest).unwrap_or(committed.digest);
            let key = ModuleKey::new(name, checksum);
            me.index.insert(
                key.clone(),
                committed.digest,
                committed.size,
                Some(&url_s),
                now,
            );
            lock(&me.orphans).remove(&committed.digest);
            me.unverified.remove(&committed.digest);
            me.journal_append(&IndexEvent::Insert {
                key: key.clone(),
                content: committed.digest,
                size: committed.size,
                url: Some(url_s),
                at: now,
            });
            Ok::<_, wasm_cache_core::Error>(Published {
                path: committed.path,
                checksum,
                key,
                content: committed.digest,
                downloaded: true,
            })
        })
        .await
        .map_err(|e| Error::Internal(format!("commit task failed: {e}")))?
        .inspect_err(|e| self.meters.fetch(result_label(e)))?;
        // Recorded before the flight ends, so a caller that arrives just after
        // finds the record instead of starting a second download.
        if url.records_checksum() {
            self.record(url, published.checksum, req);
        }
        self.meters.fetch(FetchResult::Success);
        self.meters.entries(self.index.len());
        info!(url = %url, checksum = %published.checksum, "fetched wasm module");
        if self
            .opts
            .max_bytes
            .is_some_and(|b| self.index.total_bytes() > b)
        {
            self.queue_budget_purge();
        }
        Ok(published)
    }

    /// Checks that `digest` of `url` is signed by a key of `policy`: free when
    /// a key of the policy verified it before, otherwise the signature alone
    /// is fetched (never the module) and checked, and the key remembered.
    ///
    /// # Errors
    /// [`wasm_cache_core::Error::NoValidSignature`] (metric `signature`), or
    /// the error fetching the signature material.
    async fn ensure_verified(
        &self,
        url: &ModuleUrl,
        digest: Sha256Digest,
        policy: &TrustPolicy,
        req: &GetRequest,
        deadline: Instant,
    ) -> Result<(), Error> {
        if let Some(keys) = self.verified.get(&digest)
            && policy.accepts_recorded(keys.iter()).is_some()
        {
            return Ok(());
        }
        let scheme = url.scheme();
        let fetcher = self.fetchers.get(&scheme).ok_or_else(|| {
            wasm_cache_core::Error::UnsupportedScheme {
                scheme: scheme.as_str().to_owned(),
            }
        })?;
        let signature_url = req
            .signature_url
            .as_deref()
            .map(ModuleUrl::parse)
            .transpose()?;
        let freq = FetchRequest::new(url.clone(), deadline)
            .with_pull_secret(req.pull_secret.clone())
            .with_max_size(self.opts.max_module_size)
            .with_digest(Some(digest))
            .with_signature_url(signature_url);
        let material = match fetcher.signatures(&freq, &digest).await {
            Ok(m) => m,
            Err(e) if e.kind() == wasm_cache_core::ErrorKind::NotFound => {
                Signatures::Missing(e.to_string())
            }
            Err(e) => {
                self.meters.fetch(result_label(&e));
                debug!(url = %url, error = %e, "fetching signatures failed");
                return Err(e.into());
            }
        };
        let reference = url.redacted();
        let repository = url
            .oci()
            .map(|o| format!("{}/{}", o.registry(), o.repository()));
        let subject = Subject {
            reference: &reference,
            repository: repository.as_deref(),
            digest: &digest,
        };
        let verdict = match &material {
            Signatures::Cosign(layers) => policy.verify_cosign(
                &subject,
                layers.iter().map(|l| CosignLayer {
                    media_type: &l.media_type,
                    payload: &l.payload,
                    signature: l.signature.as_deref(),
                }),
            ),
            Signatures::Detached(signature) => policy.verify_blob(&subject, signature),
            Signatures::Missing(reason) => Err(policy.rejection(&subject, vec![reason.clone()])),
            _ => Err(policy.rejection(
                &subject,
                vec!["the fetcher returned signature material of an unknown kind".to_owned()],
            )),
        };
        match verdict {
            Ok(verified) => {
                info!(url = %url, digest = %digest.to_prefixed(), key = %verified.key, "signature verified");
                let mut keys = self.verified.entry(digest).or_default();
                if !keys.contains(&verified.key) {
                    keys.push(verified.key);
                }
                Ok(())
            }
            Err(e) => {
                self.meters.fetch(FetchResult::Signature);
                debug!(url = %url, digest = %digest.to_prefixed(), reasons = ?e.reasons(), "signature verification failed");
                Err(signature_error(e).into())
            }
        }
    }

    /// Runs a purge soon, off this task, unless one is already queued or the
    /// cache is shutting down; [`Cache::shutdown`] waits for it.
    fn queue_budget_purge(self: &Arc<Self>) {
        if self.closed.load(Ordering::Acquire)
            || self.budget_purge_queued.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let me = Arc::clone(self);
        let handle = tokio::task::spawn_blocking(move || {
            me.budget_purge_queued.store(false, Ordering::Release);
            if !me.closed.load(Ordering::Acquire) {
                me.purge();
            }
        });
        let mut running = lock(&self.budget_purges);
        running.retain(|h| !h.is_finished());
        running.push(handle);
    }

    /// One purge: expiry, then the byte budget, then orphans; then the
    /// journal is compacted.
    fn purge(&self) -> PurgeReport {
        let now = self.now();
        let mut report = PurgeReport::default();
        let mut removed = Vec::new();
        for key in self.index.expired(now, self.opts.expiry) {
            if let Some(r) = self.index.remove_if_idle(&key, now, self.opts.expiry) {
                report.expired.push(key);
                removed.push(r);
            }
        }
        if let Some(budget) = self.opts.max_bytes {
            for key in self.index.select_lru(now, budget, self.opts.grace) {
                if let Some(r) = self.index.remove_if_idle(&key, now, self.opts.grace) {
                    report.evicted.push(key);
                    removed.push(r);
                }
            }
        }
        for e in removed {
            let content = e.entry.content;
            let _guard = self.publish_lock(&content);
            self.journal_append(&IndexEvent::Remove {
                key: e.entry.key.clone(),
            });
            if self.index.content_in_use(&content) {
                continue;
            }
            match self.store.remove(&content) {
                Ok(_) => {
                    report.files_removed += 1;
                    self.unverified.remove(&content);
                    debug!(module = %e.entry.key.redacted_name(), "removed stale wasm module");
                }
                Err(err) => {
                    // REFERENCE §5: a failed removal keeps the entry.
                    warn!(module = %e.entry.key.redacted_name(), error = %err, "failed to purge wasm module");
                    report.failures += 1;
                    self.restore(&e);
                }
            }
        }
        self.purge_orphans(now, &mut report);
        self.meters.entries(self.index.len());
        if let Err(e) = self.flush() {
            warn!(error = %e, "compacting the wasm cache journal failed");
        }
        report
    }

    /// Puts back an entry whose file could not be removed, with its URLs and
    /// checksum records, in the index and the journal.
    fn restore(&self, removed: &Removed) {
        for event in self.index.restore(removed) {
            self.journal_append(&event);
        }
    }

    fn purge_orphans(&self, now: Timestamp, report: &mut PurgeReport) {
        let orphans: Vec<Sha256Digest> = lock(&self.orphans).iter().copied().collect();
        for digest in orphans {
            let _guard = self.publish_lock(&digest);
            if self.index.content_in_use(&digest) {
                lock(&self.orphans).remove(&digest);
                continue;
            }
            let Some(m) = self.store.get(&digest) else {
                lock(&self.orphans).remove(&digest);
                continue;
            };
            let age = now.since(Timestamp::from_system_time(m.modified));
            if age > self.opts.expiry {
                match self.store.remove(&digest) {
                    Ok(_) => {
                        report.files_removed += 1;
                        lock(&self.orphans).remove(&digest);
                    }
                    Err(e) => {
                        report.failures += 1;
                        warn!(error = %e, "removing an orphaned module failed");
                    }
                }
            }
        }
    }

    /// [`Cache::verify`]: the store finds the mismatches (reading no lock but
    /// each file's own); each one is checked again and removed under its
    /// publish lock.
    fn verify_all(&self, repair: bool) -> Result<VerifyReport, Error> {
        let mut report = self.store.verify_all(false)?;
        for digest in &report.ok {
            self.unverified.remove(digest);
        }
        if repair {
            for m in &report.mismatched {
                let _guard = self.publish_lock(&m.digest);
                // A fetch may have replaced the file with a good one meanwhile.
                match self.store.verify(&m.digest) {
                    Ok(false) => {}
                    Ok(true) | Err(StoreError::NotFound { .. }) => continue,
                    Err(e) => return Err(e.into()),
                }
                if self.drop_content_locked(&m.digest)? {
                    report.removed.push(m.digest);
                }
            }
        }
        Ok(report)
    }

    /// Rewrites the journal from the index (last-use stamps of hits included).
    fn flush(&self) -> Result<(), Error> {
        let _exclusive = self
            .journal_gate
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        self.journal.compact(&self.index.to_events())?;
        Ok(())
    }
}

fn result_label(e: &wasm_cache_core::Error) -> FetchResult {
    use wasm_cache_core::ErrorKind as K;
    match e.kind() {
        K::Integrity => FetchResult::ChecksumMismatched,
        K::Manifest => FetchResult::ManifestFailure,
        K::InvalidModule | K::Storage | K::InvalidInput => FetchResult::FetchFailure,
        _ => FetchResult::DownloadFailure,
    }
}

/// The store's ingest as the fetcher's sink; takes on the content digest
/// check a fetcher offers ([`ModuleSink::verify_sha256`]), which the cache
/// then does with the store's hash before committing.
struct VerifyingSink<'a> {
    ingest: &'a mut wasm_store_fs::Ingest,
    content: Option<Sha256Digest>,
}

impl wasm_cache_core::ModuleSink for VerifyingSink<'_> {
    fn write(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        wasm_cache_core::ModuleSink::write(self.ingest, chunk)
    }

    fn verify_sha256(&mut self, digest: Sha256Digest) -> bool {
        self.content = Some(digest);
        true
    }
}

/// The signature crate's failure in the fetch error enum's terms.
fn signature_error(e: wasm_cache_signature::Error) -> wasm_cache_core::Error {
    match e {
        wasm_cache_signature::Error::NoValidSignature {
            reference,
            digest,
            keys,
            reasons,
        } => wasm_cache_core::Error::NoValidSignature {
            reference,
            digest,
            keys: keys
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            reasons,
        },
        other => wasm_cache_core::Error::InvalidConfig {
            reason: other.to_string(),
        },
    }
}
