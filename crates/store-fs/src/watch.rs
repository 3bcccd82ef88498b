//! The hot set: modules a hit may hand out without a system call, kept true
//! by an inotify watch of the store directory.
//!
//! [`FsStore::servable`](crate::FsStore::servable) answers "is this module
//! verified and its file there?". Without a watch that costs an `fstatat`
//! per call (about 1 µs, more than the rest of a cache hit). With one, the
//! answer found by that `fstatat` is remembered in the hot set until the
//! watch reports a change to the name:
//!
//! - `IN_DELETE`, `IN_MOVED_FROM` (the name removed or renamed away): the
//!   entry is dropped, so the next call stats the name again and finds it gone;
//! - `IN_MOVED_TO`, `IN_CREATE`, `IN_CLOSE_WRITE`, `IN_ATTRIB` (something
//!   renamed or written onto the name, its mode or links changed): the entry
//!   is dropped and, unless the file carries the verification mark of its
//!   current state (see `mark`), the module is marked unverified, so it is
//!   re-hashed before it is served again;
//! - `IN_Q_OVERFLOW` (events lost): every entry is dropped and every verified
//!   module re-checked as above, in the watch's thread;
//! - `IN_IGNORED`, `IN_DELETE_SELF`, `IN_MOVE_SELF`, `IN_UNMOUNT`, a read
//!   error (the watch is gone): the hot set is emptied and stays off; every
//!   call stats again, as without a watch.
//!
//! No watch is set up (and every call stats) when inotify is unavailable
//! (limits on instances or watches, a kernel without it), on network and
//! FUSE file systems (where other machines' changes raise no event), or when
//! [`FsStore::disable_watch`](crate::FsStore::disable_watch) was called.
//!
//! So a file deleted behind the store's back is handed out only until its
//! event is read: the watch's thread wakes on it, typically within
//! microseconds. The one race (an entry added by a call that stat'ed the
//! file just before an event dropped it) is closed by an epoch: every
//! invalidation changes the state first, then bumps the epoch, then drops the
//! entry; an insertion that sees the epoch moved while it ran drops its own
//! entry again.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::mem::MaybeUninit;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, PoisonError, RwLock, Weak};

use rustix::fd::OwnedFd;
use rustix::fs::inotify::{self, ReadFlags, WatchFlags};
use wasm_cache_core::Sha256Digest;

use crate::names::{self, NameKind};
use crate::store::Inner;

/// A module [`FsStore::servable`](crate::FsStore::servable) may hand out.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Servable {
    /// Its file, `<dir>/<hex>.wasm`.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
}

/// Shards of the hot set (by a digest byte): two hits on different modules
/// rarely touch the same lock.
const SHARDS: usize = 32;

/// Digests are uniformly random: their first bytes are a hash already, so the
/// hot set does not hash them again (SipHash of 32 bytes costs more than the
/// rest of the lookup).
#[derive(Default)]
struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut word = [0u8; 8];
        let n = bytes.len().min(8);
        word[..n].copy_from_slice(&bytes[..n]);
        self.0 = self.0.rotate_left(7) ^ u64::from_le_bytes(word);
    }
}

type Map = HashMap<Sha256Digest, Servable, BuildHasherDefault<DigestHasher>>;

/// The watch: the inotify descriptor (shared with its thread) and the
/// watch descriptor of the store directory.
struct Watch {
    fd: Arc<OwnedFd>,
    wd: i32,
}

pub(crate) struct Hot {
    /// Set by [`FsStore::disable_watch`](crate::FsStore::disable_watch).
    disabled: AtomicBool,
    /// Started on the first [`FsStore::servable`](crate::FsStore::servable)
    /// (`None` inside: no watch could be set up).
    watch: OnceLock<Option<Watch>>,
    /// The watch was lost: never trusted again.
    lost: AtomicBool,
    epoch: AtomicU64,
    shards: Box<[RwLock<Map>]>,
}

impl Drop for Hot {
    fn drop(&mut self) {
        // Wakes the watch's thread (it reads IN_IGNORED, finds the store gone
        // and exits, closing the descriptor).
        if let Some(Some(w)) = self.watch.get() {
            let _ = inotify::remove_watch(&*w.fd, w.wd);
        }
    }
}

impl Hot {
    pub(crate) fn new() -> Self {
        Self {
            disabled: AtomicBool::new(false),
            watch: OnceLock::new(),
            lost: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
            shards: (0..SHARDS).map(|_| RwLock::new(Map::default())).collect(),
        }
    }

    fn shard(&self, digest: &Sha256Digest) -> &RwLock<Map> {
        &self.shards[usize::from(digest.as_bytes()[31]) % SHARDS]
    }

    /// Whether entries may be trusted: a watch is running and not lost.
    pub(crate) fn active(&self) -> bool {
        !self.disabled.load(Ordering::Acquire)
            && !self.lost.load(Ordering::Acquire)
            && matches!(self.watch.get(), Some(Some(_)))
    }

    /// Whether a watch is running (or, the first time, starts one).
    pub(crate) fn is_watching(&self, inner: &Arc<Inner>) -> bool {
        !self.disabled.load(Ordering::Acquire)
            && self.watch.get_or_init(|| start(inner)).is_some()
            && !self.lost.load(Ordering::Acquire)
    }

    /// The hot entry of `digest`, if the watch vouches for it.
    pub(crate) fn get(&self, digest: &Sha256Digest) -> Option<Servable> {
        if !self.active() {
            return None;
        }
        self.shard(digest)
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(digest)
            .cloned()
    }

    /// The epoch to pass to [`insert`](Self::insert), read before the state
    /// an insertion relies on is read.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Remembers that `digest` is servable as `s`, as checked since `epoch`.
    pub(crate) fn insert(&self, digest: Sha256Digest, s: Servable, epoch: u64) {
        let shard = self.shard(&digest);
        shard
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(digest, s);
        if self.epoch.load(Ordering::SeqCst) != epoch || !self.active() {
            // Something changed while we checked: the entry may be stale.
            shard
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&digest);
        }
    }

    /// The epoch, if the watch vouches for the hot set now: an answer of
    /// [`FsStore::servable`](crate::FsStore::servable) obtained after this
    /// call still holds while a later call returns the same `Some`.
    pub(crate) fn vouching_epoch(&self) -> Option<u64> {
        let epoch = self.epoch.load(Ordering::SeqCst);
        self.active().then_some(epoch)
    }

    /// Forgets `digest`; call after changing what made it servable.
    ///
    /// The epoch moves before the entry goes (so an insertion racing with
    /// this drops its own entry again) and once more after (so a caller that
    /// read the epoch between the two and then found the old entry holds an
    /// epoch that is already stale: see [`vouching_epoch`](Self::vouching_epoch)).
    pub(crate) fn invalidate(&self, digest: &Sha256Digest) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.shard(digest)
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(digest);
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    /// Forgets everything (the epoch moves before and after, as in
    /// [`invalidate`](Self::invalidate)).
    fn clear(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        for s in &*self.shards {
            s.write().unwrap_or_else(PoisonError::into_inner).clear();
        }
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) fn disable(&self) {
        self.disabled.store(true, Ordering::Release);
        self.clear();
    }

    fn lose(&self, dir: &Path, why: &str) {
        if !self.lost.swap(true, Ordering::AcqRel) {
            tracing::warn!(dir = %dir.display(), reason = why, "lost the watch of the module directory; hits check each module file with a stat from now on");
        }
        self.clear();
    }
}

/// `statfs` magic numbers of network and FUSE file systems: a change made by
/// another machine (or behind a FUSE server) raises no inotify event here.
const NO_WATCH_FS: [i64; 12] = [
    0x6969,      // NFS
    0x517B,      // SMB
    0xFF53_4D42, // CIFS
    0xFE53_4D42, // SMB2
    0x6573_5546, // FUSE
    0x00C3_6400, // Ceph
    0x0102_1997, // 9p
    0x5346_414F, // AFS
    0x7375_7245, // Coda
    0x0116_1970, // GFS2
    0x7461_636F, // OCFS2
    0x0BD0_0BD0, // Lustre
];

/// Sets up the watch of `inner`'s directory and its thread; `None` (after
/// logging why, at debug level) when that is not possible or not reliable.
fn start(inner: &Arc<Inner>) -> Option<Watch> {
    let dir = inner.dir();
    let why_not = |what: &str, e: &dyn std::fmt::Display| {
        tracing::debug!(dir = %dir.display(), error = %e, "no watch of the module directory ({what}); hits check each module file with a stat");
    };
    match rustix::fs::fstatfs(inner.dir_fd()) {
        #[allow(
            clippy::unnecessary_cast,
            clippy::cast_possible_wrap,
            reason = "f_type's integer type differs between targets"
        )]
        Ok(fs) if NO_WATCH_FS.contains(&(fs.f_type as i64)) => {
            why_not(
                "network or FUSE file system",
                &format_args!("{:#x}", fs.f_type),
            );
            return None;
        }
        Ok(_) => {}
        Err(e) => {
            why_not("statfs", &e);
            return None;
        }
    }
    let fd = match inotify::init(inotify::CreateFlags::CLOEXEC) {
        Ok(fd) => Arc::new(fd),
        Err(e) => {
            why_not("inotify_init1", &e);
            return None;
        }
    };
    let flags = WatchFlags::DELETE
        | WatchFlags::MOVED_FROM
        | WatchFlags::MOVED_TO
        | WatchFlags::CREATE
        | WatchFlags::CLOSE_WRITE
        | WatchFlags::ATTRIB
        | WatchFlags::DELETE_SELF
        | WatchFlags::MOVE_SELF
        | WatchFlags::ONLYDIR
        | WatchFlags::DONT_FOLLOW;
    let wd = match inotify::add_watch(&*fd, dir, flags) {
        Ok(wd) => wd,
        Err(e) => {
            why_not("inotify_add_watch", &e);
            return None;
        }
    };
    // The path must still name the directory the store has open.
    let same = match (rustix::fs::stat(dir), rustix::fs::fstat(inner.dir_fd())) {
        (Ok(a), Ok(b)) => (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino),
        _ => false,
    };
    if !same {
        why_not("the directory was replaced", &"different inode");
        return None;
    }
    let thread_fd = Arc::clone(&fd);
    let store = Arc::downgrade(inner);
    let spawned = std::thread::Builder::new()
        .name("wasm-store-watch".into())
        .spawn(move || run(&thread_fd, &store));
    if let Err(e) = spawned {
        why_not("spawning its thread", &e);
        return None;
    }
    Some(Watch { fd, wd })
}

/// The watch's thread: reads events until the store is dropped or the watch lost.
fn run(fd: &OwnedFd, store: &Weak<Inner>) {
    let mut buf = vec![MaybeUninit::<u8>::uninit(); 64 * 1024];
    let mut reader = inotify::Reader::new(fd, &mut buf);
    loop {
        let event = match reader.next() {
            Ok(e) => e,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => {
                if let Some(inner) = store.upgrade() {
                    inner
                        .hot()
                        .lose(inner.dir(), &format!("reading events: {e}"));
                }
                return;
            }
        };
        let Some(inner) = store.upgrade() else {
            return;
        };
        let flags = event.events();
        if flags.contains(ReadFlags::QUEUE_OVERFLOW) {
            inner.hot().clear();
            inner.recheck_all();
            continue;
        }
        if flags.intersects(
            ReadFlags::IGNORED | ReadFlags::DELETE_SELF | ReadFlags::MOVE_SELF | ReadFlags::UNMOUNT,
        ) {
            inner
                .hot()
                .lose(inner.dir(), "the directory was moved, deleted or unmounted");
            return;
        }
        let Some(NameKind::Module(digest)) = event
            .file_name()
            .and_then(|n| n.to_str().ok())
            .map(names::classify)
        else {
            continue;
        };
        if flags.intersects(ReadFlags::DELETE | ReadFlags::MOVED_FROM) {
            inner.hot().invalidate(&digest);
        } else {
            inner.recheck(&digest);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::time::{Duration, Instant};

    use wasm_cache_core::ModuleSink;

    use crate::FsStore;

    const DEADLINE: Duration = Duration::from_secs(20);

    fn ingest(store: &FsStore, seed: u64) -> (Sha256Digest, PathBuf) {
        let mut i = store.ingest(None, 1 << 20).unwrap();
        i.write(&wasm_cache_testkit::modules::sample_module(3_000, seed))
            .unwrap();
        let c = i.commit().unwrap();
        (c.digest, c.path)
    }

    use super::*;

    /// Polls `cond` until it holds, failing after [`DEADLINE`].
    fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
        let started = Instant::now();
        while !cond() {
            assert!(started.elapsed() < DEADLINE, "{what} after {DEADLINE:?}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn the_watch_vouches_for_a_file_until_it_is_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = FsStore::open(dir.path()).unwrap();
        let (d, path) = ingest(&store, 1);
        let s = store.servable(&d).unwrap();
        assert_eq!((s.path.as_path(), s.size), (path.as_path(), 3_000));
        assert!(store.watching(), "a watch runs on a local file system");
        // Served from the hot set now (the same answer).
        assert_eq!(store.servable(&d), Some(s));
        fs::remove_file(&path).unwrap();
        eventually("the deleted file is still servable", || {
            store.servable(&d).is_none()
        });
    }

    #[test]
    fn a_file_replaced_behind_the_store_is_unverified() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = FsStore::open(dir.path()).unwrap();
        let (d, path) = ingest(&store, 2);
        assert!(store.servable(&d).is_some());
        let other = dir.path().join("other.bin");
        fs::write(&other, wasm_cache_testkit::modules::sample_module(3_000, 3)).unwrap();
        fs::rename(&other, &path).unwrap();
        eventually("the replaced file is still servable", || {
            store.servable(&d).is_none()
        });
        assert!(!store.get(&d).unwrap().verified);
        assert!(
            !store.verify(&d).unwrap(),
            "and it does not hash to its name"
        );
    }

    #[test]
    fn our_own_ingest_and_verification_mark_keep_a_module_verified() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = FsStore::open(dir.path()).unwrap();
        let (d, _) = ingest(&store, 4);
        assert!(store.servable(&d).is_some());
        // A second ingest of the same content renames onto the name again
        // (the store keeps it, or replaces it by an identical, marked file).
        let (again, _) = ingest(&store, 4);
        assert_eq!(again, d);
        // Events are read in order: once the deletion of another module is
        // seen, every event of our ingest was handled.
        let (marker, marker_path) = ingest(&store, 5);
        assert!(store.servable(&marker).is_some());
        fs::remove_file(&marker_path).unwrap();
        eventually("the marker's deletion is unseen", || {
            store.servable(&marker).is_none()
        });
        assert!(
            store.get(&d).unwrap().verified,
            "still verified: its mark matches"
        );
        assert!(store.servable(&d).is_some());
    }

    #[test]
    fn the_servable_epoch_moves_with_every_change_the_watch_sees() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = FsStore::open(dir.path()).unwrap();
        let (d, path) = ingest(&store, 8);
        assert!(store.servable(&d).is_some());
        // Events are read in order: once the marker's deletion is seen, the
        // events of both ingests were handled.
        let (marker, marker_path) = ingest(&store, 9);
        assert!(store.servable(&marker).is_some());
        fs::remove_file(&marker_path).unwrap();
        eventually("the marker's deletion is unseen", || {
            store.servable(&marker).is_none()
        });
        let epoch = store.servable_epoch();
        assert!(epoch.is_some(), "the watch vouches");
        assert_eq!(store.servable(&d).map(|s| s.path), Some(path.clone()));
        assert_eq!(store.servable_epoch(), epoch, "a hit changes nothing");
        fs::remove_file(&path).unwrap();
        eventually("the epoch still vouches for a deleted file", || {
            store.servable_epoch() != epoch
        });
        store.disable_watch();
        assert_eq!(store.servable_epoch(), None, "no watch, nothing vouched");
    }

    #[test]
    fn without_the_watch_every_call_stats() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = FsStore::open(dir.path()).unwrap();
        store.disable_watch();
        let (d, path) = ingest(&store, 7);
        assert!(store.servable(&d).is_some());
        assert!(!store.watching());
        fs::remove_file(&path).unwrap();
        assert_eq!(store.servable(&d), None, "noticed by the very next call");
    }

    #[test]
    fn a_lost_watch_falls_back_to_stat() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("store");
        let (store, _) = FsStore::open(&dir).unwrap();
        let (d, _) = ingest(&store, 6);
        assert!(store.servable(&d).is_some());
        assert!(store.watching());
        // The directory moves away (IN_MOVE_SELF): the watch is not trusted again.
        let moved = parent.path().join("moved");
        fs::rename(&dir, &moved).unwrap();
        eventually("the watch is still trusted", || !store.watching());
        // Every call stats from now on: a deletion is noticed by the next call.
        fs::remove_file(moved.join(d.file_name())).unwrap();
        assert_eq!(store.servable(&d), None);
    }

    #[test]
    fn the_digest_hasher_spreads_digests() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..1000u32 {
            let mut bytes = [0u8; 32];
            bytes[..4].copy_from_slice(&i.to_le_bytes());
            let mut h = DigestHasher::default();
            std::hash::Hash::hash(&Sha256Digest::from_bytes(bytes), &mut h);
            seen.insert(h.finish());
        }
        assert_eq!(seen.len(), 1000);
    }
}
