//! The public `Cache` facade and the state its modules share.
//!
//! `flight` (single flight, the cross-process download lock), `hit` (the hit
//! path), `fetch` (download, commit, index), `trust` (signature checks),
//! `recover` (open-time recovery, other processes' appends) and `purge`
//! (everything that deletes module files) each add methods to `Inner`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{Instrument, warn};
use wasm_cache_core::{
    EntryInfo, EntryRefs, Fetcher, Index, IndexEvent, ModuleKey, ModuleUrl, Scheme, Sha256Digest,
    Timestamp,
};
use wasm_cache_signature::TrustPolicy;
use wasm_store_fs::{FsStore, Journal, VerifyReport};

use crate::metrics::Meters;
use crate::outcome::{Outcome, Resolved};
use crate::{CacheBuilder, Clock, Error, GetRequest};

mod fetch;
mod flight;
mod hints;
mod hit;
mod hot;
mod purge;
mod recover;
mod trust;

use self::flight::{Flight, FlightKey, flight_key};
use self::hints::Hints;
use self::hit::Hit;
use self::hot::UrlRecord;
pub use self::purge::PurgeReport;
use self::purge::purge_loop;
use self::recover::recover;

/// The journal file, beside the modules.
pub(crate) const JOURNAL_FILE: &str = "index.journal";

/// A compaction rewrites the journal only once its dead lines outnumber its
/// live records by more than this (so it stays within twice its live size
/// plus this slack, and a hit or a short command never rewrites it).
const COMPACT_SLACK: u64 = 64;

/// How long metadata work (appending to the journal, compacting it) waits
/// for another process's metadata work at most, when no request deadline
/// applies: others hold the journal's lock only for an append or a compaction.
const METADATA_WAIT: Duration = Duration::from_secs(5);

/// How long batched last-use updates wait for the journal's lock: they are
/// best effort and must never hold a command up.
const TOUCH_WAIT: Duration = Duration::from_secs(1);

/// Pending last-use updates are appended once this many have gathered and
/// [`TOUCH_EVERY`] has passed since the last batch, or [`TOUCH_MAX`] have
/// gathered (and at every purge and at shutdown).
const TOUCH_BATCH: usize = 1024;

/// See [`TOUCH_BATCH`]: with many modules hit in turn, a batch per 1,024 hits
/// serialised a record per hit, more than the hit itself.
const TOUCH_EVERY: Duration = Duration::from_secs(1);

/// See [`TOUCH_BATCH`]: bounds the memory of pending updates.
const TOUCH_MAX: usize = 65_536;

/// The hash of the hit path's own maps (see `foldhash` in Cargo.toml).
type FastHash = foldhash::fast::RandomState;

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

pub(crate) struct Options {
    pub(crate) purge_interval: Duration,
    pub(crate) expiry: Duration,
    pub(crate) max_bytes: Option<u64>,
    pub(crate) grace: Duration,
    pub(crate) max_module_size: u64,
    pub(crate) trust: Option<Arc<TrustPolicy>>,
    /// See [`CacheBuilder::watch_directory`].
    pub(crate) watch: bool,
}

struct Inner {
    store: FsStore,
    index: Index,
    journal: Journal<IndexEvent>,
    /// The lookup hints beside the modules (`None`: not available here).
    hints: Option<Hints>,
    /// Serialises reads of other processes' journal appends into the index.
    sync: Mutex<()>,
    /// Last-use updates of hits not yet in the journal: appended as one batch
    /// (best effort) at purge, at shutdown, or when [`TOUCH_BATCH`] gather.
    touches: DashMap<ModuleKey, Timestamp, FastHash>,
    /// Updates added to `touches` since the last batch was taken.
    touches_pending: AtomicUsize,
    /// When the last batch of `touches` was taken ([`Inner::uptime_millis`]).
    touches_flushed: AtomicU64,
    /// When this cache was opened: the origin of `touches_flushed`.
    opened: Instant,
    fetchers: HashMap<Scheme, Arc<dyn Fetcher>>,
    clock: Arc<dyn Clock>,
    opts: Options,
    flights: DashMap<FlightKey, Flight>,
    /// Per URL text: the parsed URL (a config push asks for the same few
    /// URLs over and over, and parsing was a third of a hit's CPU time) and
    /// its last hit, which answers the next one (see `hot`).
    urls: DashMap<String, Arc<UrlRecord>, FastHash>,
    /// Bumped to invalidate every hot record (see `hot`).
    hot_gen: AtomicU64,
    meters: Meters,
    /// Which keys verified which digest (the manifest digest for OCI, the
    /// module's sha256 otherwise), so a hit under a policy needs no round trip.
    /// Journaled with their evidence for other processes (see `trust`).
    verified: trust::Verifications,
    closed: AtomicBool,
    task: Mutex<Option<(JoinHandle<()>, watch::Sender<bool>)>>,
    /// A byte-budget purge asked for by a fetch and not started yet: fetches
    /// that go over the budget meanwhile share it instead of queueing more.
    budget_purge_queued: AtomicBool,
    /// Byte-budget purges started by fetches; shutdown waits for them.
    budget_purges: Mutex<Vec<JoinHandle<()>>>,
    /// The lookup hints' re-sync started by the open; shutdown waits for it,
    /// so that once a shut-down cache is dropped nothing of it (its store,
    /// its index) is left running in the background.
    hints_resync: Mutex<Option<JoinHandle<()>>>,
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

impl Cache {
    /// A builder for a cache storing modules in `dir`.
    pub fn builder(dir: impl Into<PathBuf>) -> CacheBuilder {
        CacheBuilder::new(dir.into())
    }

    /// Answers `req` from the cache directory `dir` without opening a cache
    /// (no journal replay, no directory scan, no fetcher): the path the
    /// `wasm-cache fetch` command serves a hit from, in a few milliseconds
    /// whatever the number of cached modules.
    ///
    /// A request carrying no trust policy is answered when its checksum is
    /// pinned (by the request, or an OCI URL pinned with `@`) or is the one
    /// the URL's checksum record gives under the request's pull policy and
    /// resource version, exactly as [`get`](Self::get) would take it; the
    /// entry is found through the directory's lookup hints, its file checked
    /// against its digest (its verification mark, or hashing it), and the
    /// hit recorded in the journal as [`get`](Self::get) records it: its last
    /// use, and for a pinned request the URL's checksum record if that
    /// changed. `Ok(None)` means "not answered here": open a cache and
    /// [`get`](Self::get) it (a miss, a URL with no record or whose record
    /// the policy says to re-pull for, a request under a trust policy, a
    /// directory without hints). A trust policy set on a builder is unknown
    /// here: do not use this for a cache whose builder sets one.
    ///
    /// The hints follow the journal: a URL's hint is removed before a change
    /// of its record is journaled and rewritten after, so a process that
    /// stops in between leaves none. They are not `fsync`ed: after a power
    /// loss, a URL's hint may again name the checksum its record had before
    /// the last re-pull (a module that was verified and cached for that URL)
    /// until the URL's record next changes.
    ///
    /// # Errors
    /// [`Error::Store`] if the module file exists but cannot be read.
    pub fn hit_in_dir(dir: impl AsRef<Path>, req: &GetRequest) -> Result<Option<Outcome>, Error> {
        let now = Timestamp::from_system_time(std::time::SystemTime::now());
        hints::hit_in_dir(dir.as_ref(), req, now)
    }

    pub(crate) async fn open(
        dir: PathBuf,
        fetchers: HashMap<Scheme, Arc<dyn Fetcher>>,
        clock: Arc<dyn Clock>,
        opts: Options,
        background: bool,
    ) -> Result<Self, Error> {
        let now = Timestamp::from_system_time(clock.now());
        let (store, index, journal, hints) = tokio::task::spawn_blocking(move || {
            recover(&dir, now).map(|(store, index, journal)| {
                let hints = Hints::open(store.dir());
                (store, index, journal, hints)
            })
        })
        .await
        .map_err(|e| Error::Internal(format!("recovery task failed: {e}")))??;
        if !opts.watch {
            store.disable_watch();
        }
        let inner = Arc::new(Inner {
            store,
            index,
            journal,
            hints,
            sync: Mutex::new(()),
            touches: DashMap::default(),
            touches_pending: AtomicUsize::new(0),
            touches_flushed: AtomicU64::new(0),
            opened: Instant::now(),
            fetchers,
            clock,
            opts,
            flights: DashMap::new(),
            urls: DashMap::default(),
            hot_gen: AtomicU64::new(0),
            meters: Meters::new(),
            verified: trust::Verifications::default(),
            closed: AtomicBool::new(false),
            task: Mutex::new(None),
            budget_purge_queued: AtomicBool::new(false),
            budget_purges: Mutex::new(Vec::new()),
            hints_resync: Mutex::new(None),
        });
        inner.meters.entries(inner.index.len());
        if inner.hints.is_some() {
            // Off the open's path: a missing hint only costs a full open later.
            let me = Arc::clone(&inner);
            let resync = tokio::task::spawn_blocking(move || {
                if let Some(h) = &me.hints {
                    h.reconcile(&me.index);
                }
            });
            *lock(&inner.hints_resync) = Some(resync);
        }
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
        let policy = req.trust.as_ref().or(inner.opts.trust.as_ref());
        // A repeat of a hit: one map lookup (see `hot`).
        if policy.is_none()
            && let Some(outcome) = inner.hot_hit(req)
        {
            inner.meters.lookup(true);
            return Ok(outcome);
        }
        let url = inner.parse_url(&req.url)?;
        let url = &*url;
        let checksum = req.given_checksum().map(Sha256Digest::parse).transpose()?;
        let (name, expected) = match inner.try_hit(url, checksum, req, policy).await? {
            Hit::Served {
                file,
                checksum,
                content,
                ..
            } => {
                inner.meters.lookup(true);
                return Ok(Outcome {
                    path: file.path,
                    sha256: content,
                    size: file.size,
                    manifest_digest: (checksum != content).then_some(checksum),
                    cached: true,
                });
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
        let fetcher = self.inner.fetcher_for(&url)?;
        crate::outcome::resolve(
            &**fetcher,
            &url,
            req,
            self.inner.opts.max_module_size,
            download,
        )
        .await
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
        // Hot hits' last uses first (see `hot`).
        self.inner.fold_hot();
        self.inner.index.entries()
    }

    /// Every entry, borrowed in place, in no particular order
    /// ([`Index::entry_refs`](wasm_cache_core::Index::entry_refs)):
    /// [`entries`](Self::entries) without its copy of every key and URL, on
    /// one thread or several; what `wasm-cache list` renders a large cache
    /// from. Until it is dropped,
    /// whatever writes to the index (a `get`, a purge, a shutdown) waits:
    /// drop it first.
    pub fn entry_refs(&self) -> EntryRefs<'_> {
        // Hot hits' last uses first (see `hot`).
        self.inner.fold_hot();
        self.inner.index.entry_refs()
    }

    /// The checksum remembered for `url`, with the resource versions that saw it.
    pub fn checksum_record(&self, url: &str) -> Option<wasm_cache_core::ChecksumRecord> {
        self.inner.index.checksum_record(url)
    }

    /// The lock file a process holds while it downloads `url` (pinned to
    /// `checksum`, the request's or the one in the URL, if any); another
    /// process missing the same module waits on it, bounded by its request's
    /// timeout. For operators wondering what a fetch waits for, and tests. This is
    /// the lock of anonymous downloads; a download with a pull secret takes one
    /// of its own per credential set.
    pub fn download_lock_path(&self, url: &str, checksum: Option<Sha256Digest>) -> PathBuf {
        self.inner
            .store
            .key_lock_path(&flight_key(url, checksum, None))
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
    /// it and for the open's re-sync of the lookup hints), refuses further
    /// `get`s, and appends the pending last-use updates
    /// to the journal (one batch, best effort: a failure, e.g. a full disk, is
    /// logged as a warning and does not fail the shutdown). Idempotent.
    ///
    /// # Errors
    /// [`Error::Internal`] if the purge task panicked.
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
        let resync = lock(&self.inner.hints_resync).take();
        if let Some(resync) = resync
            && let Err(e) = resync.await
        {
            // Best effort, like the hints themselves: the next open re-syncs.
            warn!(error = %e, "re-syncing the lookup hints failed");
        }
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || inner.flush_touches(Instant::now() + TOUCH_WAIT))
            .await
            .map_err(|e| Error::Internal(format!("flush task failed: {e}")))
    }

    /// Whether the background purge task is running.
    pub fn purge_task_running(&self) -> bool {
        lock(&self.inner.task)
            .as_ref()
            .is_some_and(|(t, _)| !t.is_finished())
    }
}

/// How many parsed URLs [`Inner::parse_url`] keeps before starting afresh.
const PARSED_URLS: usize = 16_384;

impl Inner {
    /// The fetcher registered for `url`'s scheme, or the reference's
    /// `unsupported Wasm module downloading URL scheme` error.
    fn fetcher_for(&self, url: &ModuleUrl) -> Result<&Arc<dyn Fetcher>, wasm_cache_core::Error> {
        let scheme = url.scheme();
        self.fetchers
            .get(&scheme)
            .ok_or_else(|| wasm_cache_core::Error::unsupported_scheme(scheme.as_str()))
    }

    /// [`ModuleUrl::parse`], remembered for URLs seen before (errors are not).
    fn parse_url(&self, raw: &str) -> Result<Arc<ModuleUrl>, wasm_cache_core::Error> {
        if let Some(r) = self.urls.get(raw) {
            return Ok(Arc::clone(&r.url));
        }
        let url = Arc::new(ModuleUrl::parse(raw)?);
        if self.urls.len() >= PARSED_URLS {
            self.clear_urls();
        }
        self.urls
            .entry(raw.to_owned())
            .or_insert_with(|| Arc::new(UrlRecord::parsed(Arc::clone(&url))));
        Ok(url)
    }

    /// Milliseconds since this cache was opened (monotonic).
    fn uptime_millis(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn now(&self) -> Timestamp {
        Timestamp::from_system_time(self.clock.now())
    }

    fn journal_append(&self, event: &IndexEvent) {
        self.journal_append_all(std::slice::from_ref(event));
    }

    /// Appends `events` as one durable batch under the journal's shared lock
    /// (waiting [`METADATA_WAIT`] at most). Best effort: the index in memory
    /// has them all the same, so a failure is a warning. Never called under
    /// the store's lock of a content (see the lock order in ARCHITECTURE.md).
    fn journal_append_all(&self, events: &[IndexEvent]) {
        if events.is_empty() {
            return;
        }
        self.append_with_hints(events, || {
            self.journal
                .lock_shared(Instant::now() + METADATA_WAIT)
                .and_then(|shared| shared.append(events, true))
        });
    }

    /// Journals `events` through `append` (under whichever journal lock the
    /// caller holds) with the lookup hints in step: the hints the records
    /// change are cleared before the append ([`Hints::before`]) and written
    /// once the records are in ([`Hints::after`]). Best effort: the index in
    /// memory has the records all the same (a module is served from memory;
    /// a restart treats its file as an orphan, or finds it gone), so a
    /// failure is a warning.
    fn append_with_hints(
        &self,
        events: &[IndexEvent],
        append: impl FnOnce() -> Result<(), wasm_store_fs::StoreError>,
    ) {
        if let Some(h) = &self.hints {
            h.before(events);
        }
        match append() {
            Ok(()) => {
                if let Some(h) = &self.hints {
                    h.after(&self.index, events);
                }
            }
            Err(e) => warn!(error = %e, "appending to the wasm cache journal failed"),
        }
    }

    /// Removes the lookup hints of an entry's URLs whose checksum records
    /// went with it ([`Hints::forget_urls`]); before the removal is journaled.
    fn forget_url_hints(&self, urls: &std::collections::BTreeSet<String>) {
        if let Some(h) = &self.hints {
            h.forget_urls(&self.index, urls);
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
}
