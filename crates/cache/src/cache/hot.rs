//! Per-URL hot records: a repeated hit answered by one map lookup.
//!
//! Every URL the cache has parsed has a [`UrlRecord`] (keyed by the URL's
//! text): its parsed form and, once a request for it has hit, a [`HotHit`]
//! holding that hit's answer (entry key, content digest, file and size) and
//! what it was answered for (resource name and version, pinned checksum as
//! given; a few of them per URL, so resources sharing a module URL do not
//! evict each other's). The next request with the same URL, resource and checksum, and no
//! trust policy, is answered from the record: no URL parse, no checksum
//! parse, no index lookup (module name, checksum record, entry), no hot-set
//! lookup, no shared write.
//!
//! A hot answer is reused only while the [`Stamp`] it was taken under holds:
//!
//! - the index's [`generation`](wasm_cache_core::Index::generation), read
//!   before the lookup that answered, changes after any change that can alter
//!   a lookup's answer (an entry removed or given another content, a checksum
//!   record changed or removed);
//! - the store's [`servable_epoch`](wasm_store_fs::FsStore::servable_epoch),
//!   read before the file was found servable, changes after every event the
//!   directory watch reads about a module file (deleted, renamed away,
//!   replaced, written), every removal or re-verification through the store,
//!   and when the watch is lost or turned off; without a watch it is `None`
//!   and every hot hit asks [`FsStore::servable`](wasm_store_fs::FsStore::servable),
//!   which stats the file, as the full path does;
//! - the cache's own generation, bumped by a purge that is about to remove
//!   entries (see below).
//!
//! So a module file deleted or replaced behind the cache's back stops being
//! served from a hot record exactly when the store stops serving it.
//!
//! **Last use.** A hot hit does not touch the index. It raises its hit's
//! `last_use` (an atomic in the record, written only when the clock's
//! millisecond has moved on since the record's last hit), and the cache folds
//! the records' last uses into the index and the pending journal batch
//! ([`Inner::fold_hot`]) before anything reads them: every batch of last-use
//! records, every purge, [`Cache::entries`](crate::Cache::entries) and
//! shutdown. A purge that found entries to remove bumps the cache's
//! generation, folds again, and only then re-checks idleness as it removes:
//! a hot hit writes its last use and then re-reads the stamp (both
//! sequentially consistent), so either the purge's fold sees that use (and
//! the entry is kept) or the hit sees the new generation and takes the full
//! path, which touches the entry under the index's lock as before. A record
//! replaced or dropped is marked `retired` before its last use is folded, with
//! the same handshake.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use wasm_cache_core::{ModuleKey, ModuleUrl, Sha256Digest, Timestamp};
use wasm_store_fs::Servable;

use super::Inner;
use crate::{GetRequest, Outcome};

/// How many hits (by resource name and version, and pinned checksum) a URL
/// record remembers: several resources asking for one module URL each keep
/// theirs instead of replacing each other's.
const VARIANTS: usize = 4;

/// What the cache keeps per URL text: the parsed URL and its last hits.
pub(super) struct UrlRecord {
    /// The URL, parsed once.
    pub(super) url: Arc<ModuleUrl>,
    /// The last hits' answers, newest first (empty until a hit without
    /// trust policy), at most [`VARIANTS`].
    hot: Box<[HotHit]>,
    /// Replaced or dropped from the map: its hits take the full path.
    retired: AtomicBool,
}

/// One hit's answer and what it answered.
struct HotHit {
    resource_name: Box<str>,
    resource_version: Box<str>,
    /// The request's checksum as given ([`GetRequest::given_checksum`]).
    checksum: Option<Box<str>>,
    key: ModuleKey,
    content: Sha256Digest,
    file: Servable,
    stamp: Stamp,
    /// Milliseconds of the latest hot hit (0: none since the record was made).
    last_use: AtomicU64,
    /// The latest `last_use` folded into the index.
    folded: AtomicU64,
}

impl HotHit {
    /// The same answer, with no hot hit of its own yet (for a new record;
    /// the old one's are folded when it is retired).
    fn carried(&self) -> Self {
        Self {
            resource_name: self.resource_name.clone(),
            resource_version: self.resource_version.clone(),
            checksum: self.checksum.clone(),
            key: self.key.clone(),
            content: self.content,
            file: self.file.clone(),
            stamp: self.stamp,
            last_use: AtomicU64::new(0),
            folded: AtomicU64::new(0),
        }
    }

    fn answers(&self, req: &GetRequest) -> bool {
        *self.resource_name == *req.resource_name
            && *self.resource_version == *req.resource_version
            && self.checksum.as_deref() == req.given_checksum()
    }
}

/// The state a hot answer was found in (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stamp {
    index: u64,
    cache: u64,
    watch: Option<u64>,
}

impl UrlRecord {
    /// The record of a URL just parsed.
    pub(super) fn parsed(url: Arc<ModuleUrl>) -> Self {
        Self {
            url,
            hot: Box::default(),
            retired: AtomicBool::new(false),
        }
    }
}

impl Inner {
    /// The current [`Stamp`]; read it before the lookup whose answer is to
    /// be remembered.
    pub(super) fn stamp(&self) -> Stamp {
        Stamp {
            index: self.index.generation(),
            cache: self.hot_gen.load(Ordering::SeqCst),
            watch: self.store.servable_epoch(),
        }
    }

    /// The hit `req` had last time, if nothing it relied on changed since;
    /// `None`: take the full path. Only for requests without a trust policy
    /// (the caller checks).
    pub(super) fn hot_hit(self: &Arc<Self>, req: &GetRequest) -> Option<Outcome> {
        let rec = self.urls.get(req.url.as_str())?;
        let hot = rec.hot.iter().find(|h| h.answers(req))?;
        if self.stamp() != hot.stamp || rec.retired.load(Ordering::SeqCst) {
            return None;
        }
        let (path, size) = match hot.stamp.watch {
            Some(_) => (hot.file.path.clone(), hot.file.size),
            // No watch vouches: one `fstatat`, as on the full path (a file
            // gone is handled there).
            None => {
                let s = self.store.servable(&hot.content)?;
                (s.path, s.size)
            }
        };
        let now = self.now().as_millis();
        if hot.last_use.load(Ordering::SeqCst) < now {
            let before = hot.last_use.fetch_max(now, Ordering::SeqCst);
            // After the write (see the module docs): a purge or a retirement
            // that started meanwhile either sees this use or is seen here.
            if self.stamp() != hot.stamp || rec.retired.load(Ordering::SeqCst) {
                return None;
            }
            if before <= hot.folded.load(Ordering::Relaxed) {
                // Newly pending for the journal.
                self.count_touch();
            }
        }
        Some(Outcome {
            path,
            sha256: hot.content,
            size,
            manifest_digest: (hot.key.checksum != hot.content).then_some(hot.key.checksum),
            cached: true,
        })
    }

    /// Remembers a hit of `req` (found under `stamp`, read before its
    /// lookup) for [`hot_hit`](Self::hot_hit), beside the URL's other
    /// current hits (up to [`VARIANTS`]). The previous record of the URL is
    /// retired.
    pub(super) fn remember_hit(
        &self,
        req: &GetRequest,
        stamp: Stamp,
        key: &ModuleKey,
        content: Sha256Digest,
        file: &Servable,
        now: Timestamp,
    ) {
        if self.stamp() != stamp {
            // Already stale: the next request takes the full path anyway.
            return;
        }
        let Some(mut slot) = self.urls.get_mut(req.url.as_str()) else {
            return;
        };
        let hit = HotHit {
            resource_name: req.resource_name.as_str().into(),
            resource_version: req.resource_version.as_str().into(),
            checksum: req.given_checksum().map(Into::into),
            key: key.clone(),
            content,
            file: file.clone(),
            stamp,
            // The full path touched the index and queued this use.
            last_use: AtomicU64::new(now.as_millis()),
            folded: AtomicU64::new(now.as_millis()),
        };
        let hot: Box<[HotHit]> = std::iter::once(hit)
            .chain(
                slot.hot
                    .iter()
                    .filter(|h| h.stamp == stamp && !h.answers(req))
                    .map(HotHit::carried),
            )
            .take(VARIANTS)
            .collect();
        let record = UrlRecord {
            url: Arc::clone(&slot.url),
            hot,
            retired: AtomicBool::new(false),
        };
        let old = std::mem::replace(slot.value_mut(), Arc::new(record));
        drop(slot);
        self.retire(&old);
    }

    /// Marks a record no longer in the map as retired and folds its last use.
    pub(super) fn retire(&self, rec: &UrlRecord) {
        rec.retired.store(true, Ordering::SeqCst);
        self.fold(rec);
    }

    /// Brings the index and the pending last-use batch up to date with the
    /// hot hits of every record.
    pub(super) fn fold_hot(&self) {
        for rec in self.urls.iter() {
            self.fold(rec.value());
        }
    }

    /// Starts over with an empty map of URL records (bounding its memory),
    /// keeping the last uses they hold.
    pub(super) fn clear_urls(&self) {
        let mut gone = Vec::new();
        self.urls.retain(|_, rec| {
            gone.push(Arc::clone(rec));
            false
        });
        for rec in gone {
            self.retire(&rec);
        }
    }

    /// Invalidates every hot record (their hits take the full path once)
    /// and folds their last uses: for a purge about to remove entries.
    pub(super) fn cool_down(&self) {
        self.hot_gen.fetch_add(1, Ordering::SeqCst);
        self.fold_hot();
    }

    fn fold(&self, rec: &UrlRecord) {
        for hot in &rec.hot {
            let at = hot.last_use.load(Ordering::SeqCst);
            if at <= hot.folded.load(Ordering::SeqCst) {
                continue;
            }
            let at_ts = Timestamp::from_millis(at);
            if self.index.touch(&hot.key, at_ts).is_some() {
                self.pending_touch(&hot.key, at_ts);
            }
            hot.folded.fetch_max(at, Ordering::SeqCst);
        }
    }
}
