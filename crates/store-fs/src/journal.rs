//! A crash-safe, append-only journal of small records, shared by processes.

use std::fs::File;
use std::io::{self, Write};
use std::marker::PhantomData;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rustix::fs::{self as rfs, AtFlags, Mode, OFlags};
use rustix::io::Errno;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::StoreError;
use crate::locks::{FileLock, LockMode, open_dir, open_or_create_nofollow, same_inode};

/// Suffix of the temporary file a compaction writes.
const COMPACT_SUFFIX: &str = ".compact-tmp";
/// Suffix of the journal's lock file.
const LOCK_SUFFIX: &str = ".lock";

/// How long [`Journal::append`] and [`Journal::compact`] wait for the
/// journal's lock (held only for metadata work by others: an append or a
/// compaction).
pub const JOURNAL_LOCK_WAIT: Duration = Duration::from_secs(5);

/// An append-only journal of records of type `T`, one line per record:
///
/// ```text
/// <crc32 of the JSON, 8 lowercase hex> <JSON>\n
/// ```
///
/// Several processes may use one journal at once:
///
/// - Appends hold the journal's lock file (`<journal>.lock`, `flock`) shared
///   and write whole lines with one `write` on an `O_APPEND` descriptor;
///   they are preceded by `#\n` if the file does not end with a newline (the
///   torn tail of a crashed or failed writer becomes a corrupt line that
///   replay skips, instead of swallowing the next record).
/// - [`JournalLock::compact`] holds the lock exclusively: it first reads what
///   others appended, then writes `<journal>.compact-tmp` (`O_CREAT | O_EXCL |
///   O_NOFOLLOW`), `fsync`s it, renames it over the journal and `fsync`s the
///   directory. A crash at any point leaves the old journal or the new one.
/// - Whoever takes the lock, and every [`read_new`](Self::read_new), first
///   checks that its descriptor is still the file at the journal's name; if a
///   compaction replaced it, the new file is opened and read from its start
///   ([`Replay::restarted`]). No append can go to a replaced file.
/// - [`read_new`](Self::read_new) returns the records appended (by anyone)
///   since the last call: a long-running process picks up other processes'
///   appends with it.
///
/// No file is opened through a symlink: a symlink at the journal's, its
/// lock's or its temporary file's name is removed and replaced by a fresh
/// file, never written through.
///
/// `Journal` is `Send + Sync` whatever `T` is.
pub struct Journal<T> {
    path: PathBuf,
    dir: PathBuf,
    name: String,
    state: Mutex<State>,
    /// In-process order between this journal's lock holders: `flock` itself
    /// is unfair, and a stream of shared holders (appends from many tasks)
    /// could starve a compaction for ever. Exclusive takers announce
    /// themselves in `writers_waiting` and new shared takers let them pass.
    gate: std::sync::RwLock<()>,
    writers_waiting: std::sync::atomic::AtomicUsize,
    _records: PhantomData<fn() -> T>,
}

#[derive(Debug)]
struct State {
    file: File,
    /// End of the last complete line read (or appended by us with nothing
    /// in between): where [`Journal::read_new`] continues.
    offset: u64,
    /// Lines in the file before `offset` (records, corrupt and blank lines).
    lines: u64,
    /// The file was replaced since the last read (or never read): the next
    /// read starts over.
    restarted: bool,
    #[cfg(test)]
    pinned_for_test: bool,
}

impl<T> std::fmt::Debug for Journal<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("path", &self.path).finish()
    }
}

/// What [`Journal::replay_report`] or [`Journal::read_new`] read.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Replay<T> {
    /// The intact records, in the order they were appended.
    pub records: Vec<T>,
    /// Complete lines skipped because their checksum, framing or JSON was wrong.
    pub corrupt: usize,
    /// Whether the file ended in a partial line (a torn append), which was ignored.
    pub torn_tail: bool,
    /// For [`Journal::read_new`]: the journal was replaced (compacted by
    /// someone) since the previous read, so `records` are the whole new
    /// journal, not a tail to add to what was read before.
    pub restarted: bool,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn encode<T: Serialize>(path: &Path, record: &T, out: &mut Vec<u8>) -> Result<(), StoreError> {
    let json = serde_json::to_vec(record).map_err(|source| StoreError::Encode {
        path: path.to_path_buf(),
        source,
    })?;
    // serde_json's compact output escapes control characters, so the JSON never
    // holds a raw newline; the check keeps the framing honest regardless.
    debug_assert!(!json.contains(&b'\n'));
    let crc = crc32fast::hash(&json);
    out.extend_from_slice(format!("{crc:08x} ").as_bytes());
    out.extend_from_slice(&json);
    out.push(b'\n');
    Ok(())
}

fn decode<T: DeserializeOwned>(line: &[u8]) -> Option<T> {
    if line.len() < 9 || line[8] != b' ' {
        return None;
    }
    let mut crc = 0u32;
    for &c in &line[..8] {
        // `encode` writes lowercase; upper-case digits are accepted as the
        // earlier `from_str_radix` accepted them.
        let v = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => return None,
        };
        crc = (crc << 4) | u32::from(v);
    }
    let json = &line[9..];
    if crc32fast::hash(json) != crc {
        return None;
    }
    serde_json::from_slice(json).ok()
}

/// Opens the journal file for reading and appending, never through a
/// symlink (one at its name is replaced by a fresh file).
fn open_journal_file(dir: &OwnedFd, dir_path: &Path, name: &str) -> Result<File, StoreError> {
    let file = open_or_create_nofollow(dir, dir_path, name, "opening journal")?;
    // `open_or_create_nofollow` opens read-write; appends need O_APPEND.
    let fl = rfs::fcntl_getfl(&file)
        .map_err(|e| StoreError::io("opening journal", dir_path.join(name), e.into()))?;
    rfs::fcntl_setfl(&file, (fl | OFlags::APPEND) - OFlags::NONBLOCK)
        .map_err(|e| StoreError::io("opening journal", dir_path.join(name), e.into()))?;
    Ok(file)
}

/// How much of the journal [`read_lines`] reads at a time.
const READ_CHUNK: usize = 256 * 1024;

/// What [`read_lines`] found besides the records it handed out.
#[derive(Debug, Default)]
struct LinesRead {
    corrupt: usize,
    torn_tail: bool,
    /// End of the last complete line.
    end: u64,
    /// Complete lines read (records, corrupt and blank lines).
    lines: u64,
}

/// Reads complete lines of `file` from `offset`, handing each intact record
/// to `each` as it is decoded (so a replay never holds the whole journal,
/// and can apply records while reading). Reads in chunks of [`READ_CHUNK`],
/// finding line ends with `memchr`; a line is never copied before decoding.
fn read_lines<T: DeserializeOwned>(
    path: &Path,
    file: &File,
    offset: u64,
    each: &mut dyn FnMut(T),
) -> Result<LinesRead, StoreError> {
    let mut out = LinesRead {
        end: offset,
        ..LinesRead::default()
    };
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    // Where the next read goes in the file, and where the unread part of
    // `buf` starts.
    let mut at = offset;
    let mut start = 0usize;
    loop {
        // Keep the partial line at the end of `buf`, read more after it.
        buf.drain(..start);
        start = 0;
        let have = buf.len();
        let want = READ_CHUNK.max(have);
        buf.resize(have + want, 0);
        let n = loop {
            match file.read_at(&mut buf[have..], at) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(StoreError::io("reading journal", path, e)),
            }
        };
        buf.truncate(have + n);
        at += n as u64;
        if n == 0 {
            out.torn_tail = !buf.is_empty();
            break;
        }
        let mut scan = have;
        while let Some(nl) = memchr::memchr(b'\n', &buf[scan..]) {
            let line = &buf[start..scan + nl];
            out.end += (line.len() + 1) as u64;
            out.lines += 1;
            if !line.is_empty() {
                match decode(line) {
                    Some(r) => each(r),
                    None => out.corrupt += 1,
                }
            }
            start = scan + nl + 1;
            scan = start;
        }
    }
    if out.corrupt > 0 {
        tracing::warn!(path = %path.display(), corrupt = out.corrupt, "skipped corrupt journal records");
    }
    Ok(out)
}

impl<T: Serialize + DeserializeOwned> Journal<T> {
    /// Opens the journal at `path`, creating it if it does not exist (never
    /// through a symlink). Nothing is read yet: [`read_new`](Self::read_new)
    /// reads from the start the first time. A leftover temporary file of an
    /// interrupted compaction is deleted if no other process is compacting.
    ///
    /// # Errors
    /// [`StoreError::Io`] naming the journal if it cannot be created or opened.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| {
                StoreError::io(
                    "opening journal",
                    &path,
                    io::Error::new(io::ErrorKind::InvalidInput, "not a UTF-8 file name"),
                )
            })?
            .to_owned();
        let dir_fd = open_dir(&dir).map_err(|e| StoreError::io("opening journal", &path, e))?;
        let file = open_journal_file(&dir_fd, &dir, &name)?;
        let journal = Self {
            path,
            dir,
            name,
            state: Mutex::new(State {
                file,
                offset: 0,
                lines: 0,
                restarted: true,
                #[cfg(test)]
                pinned_for_test: false,
            }),
            gate: std::sync::RwLock::new(()),
            writers_waiting: std::sync::atomic::AtomicUsize::new(0),
            _records: PhantomData,
        };
        // Tidy only if nobody compacts right now (a compaction in progress owns it).
        if let Ok(Some(_exclusive)) = journal.try_lock(LockMode::Exclusive, Instant::now()) {
            journal.remove_compact_temp(&dir_fd);
        }
        Ok(journal)
    }

    /// The journal file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Lines in the journal file as far as it has been read (records, corrupt
    /// and blank lines): with the number of live records, what decides
    /// whether a compaction is worth it.
    pub fn lines(&self) -> u64 {
        lock(&self.state).lines
    }

    fn dir_fd(&self) -> Result<OwnedFd, StoreError> {
        open_dir(&self.dir).map_err(|e| StoreError::io("opening journal directory", &self.dir, e))
    }

    fn lock_name(&self) -> String {
        format!("{}{LOCK_SUFFIX}", self.name)
    }

    /// Makes `st.file` the file at the journal's name again if a compaction
    /// (by anyone) replaced it.
    fn revalidate(&self, st: &mut State, dir: &OwnedFd) -> Result<(), StoreError> {
        #[cfg(test)]
        if st.pinned_for_test {
            return Ok(());
        }
        if same_inode(dir, &self.name, &st.file) {
            return Ok(());
        }
        st.file = open_journal_file(dir, &self.dir, &self.name)?;
        st.offset = 0;
        st.lines = 0;
        st.restarted = true;
        Ok(())
    }

    fn try_lock(
        &self,
        mode: LockMode,
        deadline: Instant,
    ) -> Result<Option<JournalLock<'_, T>>, StoreError> {
        let Some(gate) = self.enter_gate(mode, deadline) else {
            return Ok(None);
        };
        let dir = self.dir_fd()?;
        let path = self.dir.join(self.lock_name());
        let mut on_wait = || {
            tracing::info!(lock = %path.display(), "waiting for another process's journal compaction or append");
        };
        let Some(file_lock) = FileLock::acquire(
            dir,
            &self.dir,
            &self.lock_name(),
            mode,
            deadline,
            false,
            &mut on_wait,
        )?
        else {
            return Ok(None);
        };
        Ok(Some(JournalLock {
            journal: self,
            _lock: file_lock,
            _gate: gate,
            mode,
        }))
    }

    /// The in-process side of the lock, polled until `deadline` (never a
    /// blocking wait: a holder may wait for something this caller holds).
    fn enter_gate(&self, mode: LockMode, deadline: Instant) -> Option<Gate<'_>> {
        use std::sync::atomic::Ordering::{AcqRel, Acquire};
        if mode == LockMode::Exclusive {
            self.writers_waiting.fetch_add(1, AcqRel);
        }
        let mut pause = Duration::from_micros(200);
        let gate = loop {
            let got = match mode {
                LockMode::Exclusive => self.gate.try_write().ok().map(Gate::Exclusive),
                LockMode::Shared if self.writers_waiting.load(Acquire) == 0 => {
                    self.gate.try_read().ok().map(Gate::Shared)
                }
                LockMode::Shared => None,
            };
            if got.is_some() {
                break got;
            }
            let now = Instant::now();
            if now >= deadline {
                break None;
            }
            std::thread::sleep(pause.min(deadline - now));
            pause = (pause * 2).min(Duration::from_millis(5));
        };
        if mode == LockMode::Exclusive {
            self.writers_waiting.fetch_sub(1, AcqRel);
        }
        gate
    }

    fn lock_mode(
        &self,
        mode: LockMode,
        deadline: Instant,
    ) -> Result<JournalLock<'_, T>, StoreError> {
        let started = Instant::now();
        self.try_lock(mode, deadline)?
            .ok_or_else(|| StoreError::LockTimeout {
                what: "the journal's lock".into(),
                path: self.dir.join(self.lock_name()),
                waited: started.elapsed(),
            })
    }

    /// Takes the journal's lock shared (appends), waiting until `deadline`.
    ///
    /// # Errors
    /// [`StoreError::LockTimeout`] if someone holds it exclusively until then;
    /// [`StoreError::Io`] if the lock file cannot be opened.
    pub fn lock_shared(&self, deadline: Instant) -> Result<JournalLock<'_, T>, StoreError> {
        self.lock_mode(LockMode::Shared, deadline)
    }

    /// Takes the journal's lock exclusively (compaction, or anything that
    /// must see every append of every process), waiting until `deadline`.
    ///
    /// # Errors
    /// As [`lock_shared`](Self::lock_shared).
    pub fn lock_exclusive(&self, deadline: Instant) -> Result<JournalLock<'_, T>, StoreError> {
        self.lock_mode(LockMode::Exclusive, deadline)
    }

    /// Appends one record durably (`fdatasync`), under the shared lock
    /// (waiting up to [`JOURNAL_LOCK_WAIT`]): when this returns `Ok`, the
    /// record survives a crash or power loss.
    ///
    /// # Errors
    /// [`StoreError::Encode`] if `record` cannot be serialised;
    /// [`StoreError::Io`] if the write or sync fails (disk full, ...): a
    /// partial line may be left, which replay skips and the next append
    /// starts after; [`StoreError::LockTimeout`].
    pub fn append(&self, record: &T) -> Result<(), StoreError> {
        self.lock_shared(Instant::now() + JOURNAL_LOCK_WAIT)?
            .append(std::slice::from_ref(record), true)
    }

    /// Records appended since the previous call (by this process or any
    /// other), or the whole journal the first time and after a compaction
    /// replaced the file ([`Replay::restarted`]). Takes no cross-process lock.
    ///
    /// # Errors
    /// [`StoreError::Io`] if the journal cannot be read.
    pub fn read_new(&self) -> Result<Replay<T>, StoreError> {
        let mut records = Vec::new();
        let read = self.read_new_each(&mut |r| records.push(r))?;
        Ok(Replay {
            records,
            corrupt: read.corrupt,
            torn_tail: read.torn_tail,
            restarted: read.restarted,
        })
    }

    /// [`read_new`](Self::read_new), handing each record to `each` as it is
    /// decoded instead of collecting them (an open applies them to its index
    /// while reading). The returned [`Replay`] has no records. `each` runs
    /// under the journal's in-process state lock: it must not call back into
    /// this journal.
    ///
    /// # Errors
    /// [`StoreError::Io`] if the journal cannot be read; records handed out
    /// before the error stay handed out, and the next read starts again
    /// where the previous successful one ended.
    pub fn read_new_each(&self, each: &mut dyn FnMut(T)) -> Result<Replay<T>, StoreError> {
        let dir = self.dir_fd()?;
        let mut st = lock(&self.state);
        self.revalidate(&mut st, &dir)?;
        let read = read_lines(&self.path, &st.file, st.offset, each)?;
        st.offset = read.end;
        st.lines += read.lines;
        Ok(Replay {
            records: Vec::new(),
            corrupt: read.corrupt,
            torn_tail: read.torn_tail,
            restarted: std::mem::take(&mut st.restarted),
        })
    }

    /// Every intact record, in order (see [`replay_report`](Self::replay_report)).
    ///
    /// # Errors
    /// [`StoreError::Io`] if the journal cannot be read.
    pub fn replay(&self) -> Result<Vec<T>, StoreError> {
        Ok(self.replay_report()?.records)
    }

    /// Reads the whole journal from its start: every line with a valid
    /// checksum and JSON becomes a record; corrupt lines are skipped and
    /// counted; a partial last line is a torn append and is ignored. Older
    /// records are never lost to a bad newer one. Does not move where
    /// [`read_new`](Self::read_new) continues.
    ///
    /// # Errors
    /// [`StoreError::Io`] if the journal cannot be read.
    pub fn replay_report(&self) -> Result<Replay<T>, StoreError> {
        let dir = self.dir_fd()?;
        let fd = rfs::openat(
            &dir,
            self.name.as_str(),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| StoreError::io("opening journal", &self.path, e.into()))?;
        let mut records = Vec::new();
        let read = read_lines(&self.path, &File::from(fd), 0, &mut |r| records.push(r))?;
        Ok(Replay {
            records,
            corrupt: read.corrupt,
            torn_tail: read.torn_tail,
            restarted: false,
        })
    }

    /// Atomically replaces the journal's content with `records`, under the
    /// exclusive lock (waiting up to [`JOURNAL_LOCK_WAIT`]); see
    /// [`JournalLock::compact`]. Records others appended since this journal
    /// last read are dropped: callers that share the file use
    /// [`lock_exclusive`](Self::lock_exclusive), [`JournalLock::read_new`]
    /// and then compact.
    ///
    /// # Errors
    /// [`StoreError::Encode`], [`StoreError::Io`] or
    /// [`StoreError::LockTimeout`]; the old journal is then intact.
    pub fn compact(&self, records: &[T]) -> Result<(), StoreError> {
        self.lock_exclusive(Instant::now() + JOURNAL_LOCK_WAIT)?
            .compact(records)
    }

    fn remove_compact_temp(&self, dir: &OwnedFd) {
        let temp = format!("{}{COMPACT_SUFFIX}", self.name);
        match rfs::unlinkat(dir, temp.as_str(), AtFlags::empty()) {
            Ok(()) => {
                tracing::info!(path = %self.dir.join(&temp).display(), "removed temporary file of an interrupted journal compaction");
            }
            Err(Errno::NOENT) => {}
            Err(e) => {
                tracing::warn!(path = %self.dir.join(&temp).display(), error = %e, "could not remove temporary file of a journal compaction");
            }
        }
    }

    #[cfg(test)]
    fn replace_file_for_test(&self, file: File) {
        let mut st = lock(&self.state);
        st.file = file;
        st.pinned_for_test = true;
    }
}

/// The journal's cross-process lock, held: shared for appends, exclusive for
/// compaction. Released when dropped. Hold it only for metadata work (never
/// across network I/O).
pub struct JournalLock<'a, T> {
    journal: &'a Journal<T>,
    // Dropped in this order: the `flock` first, then the in-process gate.
    _lock: FileLock,
    _gate: Gate<'a>,
    mode: LockMode,
}

/// The in-process side of a [`JournalLock`] (held only to be released).
#[allow(dead_code)] // reason: the guards are held for their drop, never read
enum Gate<'a> {
    Shared(std::sync::RwLockReadGuard<'a, ()>),
    Exclusive(std::sync::RwLockWriteGuard<'a, ()>),
}

impl<T> std::fmt::Debug for JournalLock<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JournalLock")
            .field("path", &self.journal.path)
            .field("exclusive", &(self.mode == LockMode::Exclusive))
            .finish()
    }
}

impl<T: Serialize + DeserializeOwned> JournalLock<'_, T> {
    /// [`Journal::read_new`], under the lock: held exclusively, nobody else
    /// can append meanwhile, so this is everything.
    ///
    /// # Errors
    /// As [`Journal::read_new`].
    pub fn read_new(&self) -> Result<Replay<T>, StoreError> {
        self.journal.read_new()
    }

    /// Lines in the journal file as far as it has been read ([`Journal::lines`]).
    pub fn lines(&self) -> u64 {
        self.journal.lines()
    }

    /// Appends `records` with one `write` (preceded by a newline if the file
    /// does not end with one); `durable` adds an `fdatasync`.
    ///
    /// # Errors
    /// [`StoreError::Encode`] if a record cannot be serialised (nothing is
    /// written then); [`StoreError::Io`] if the write or sync fails.
    pub fn append(&self, records: &[T], durable: bool) -> Result<(), StoreError> {
        let j = self.journal;
        let mut buf = Vec::with_capacity(128 * records.len().max(1));
        for r in records {
            encode(&j.path, r, &mut buf)?;
        }
        if buf.is_empty() {
            return Ok(());
        }
        let dir = j.dir_fd()?;
        let mut st = lock(&j.state);
        j.revalidate(&mut st, &dir)?;
        let before = st
            .file
            .metadata()
            .map_err(|e| StoreError::io("appending to journal", &j.path, e))?
            .len();
        if before > 0 {
            let mut last = [0u8; 1];
            let torn = match st.file.read_at(&mut last, before - 1) {
                Ok(1) => last[0] != b'\n',
                _ => true,
            };
            if torn {
                // Ends the torn line with a byte its checksum cannot cover,
                // so it stays corrupt even if only its newline was missing
                // (its writer was told the append failed).
                buf.splice(0..0, *b"#\n");
            }
        }
        let written = st
            .file
            .write_all(&buf)
            .and_then(|()| if durable { st.file.sync_data() } else { Ok(()) });
        written.map_err(|e| StoreError::io("appending to journal", &j.path, e))?;
        // Skip our own lines on the next read when nobody wrote around them.
        if before == st.offset
            && st
                .file
                .metadata()
                .is_ok_and(|m| m.len() == before + buf.len() as u64)
        {
            st.offset += buf.len() as u64;
            st.lines += buf.iter().filter(|&&b| b == b'\n').count() as u64;
        }
        Ok(())
    }

    /// Atomically replaces the journal's content with `records` (the lock
    /// must be held exclusively): they are written to `<journal>.compact-tmp`
    /// (created with `O_EXCL | O_NOFOLLOW` after removing any leftover or
    /// symlink at that name), `fsync`ed, renamed over the journal, and the
    /// directory is `fsync`ed. A crash at any point leaves either the old
    /// journal or the new one, never a mix.
    ///
    /// # Errors
    /// [`StoreError::Encode`] or [`StoreError::Io`]; the old journal is then intact.
    pub fn compact(&self, records: &[T]) -> Result<(), StoreError> {
        let j = self.journal;
        if self.mode != LockMode::Exclusive {
            return Err(StoreError::io(
                "compacting journal",
                &j.path,
                io::Error::other("the journal's lock is held shared, not exclusively"),
            ));
        }
        let dir = j.dir_fd()?;
        let mut st = lock(&j.state);
        let temp_name = format!("{}{COMPACT_SUFFIX}", j.name);
        let temp = j.dir.join(&temp_name);
        j.remove_compact_temp(&dir);
        let result = write_compacted(&j.path, &dir, &temp_name, &temp, records);
        let len = match result {
            Ok(len) => len,
            Err(e) => {
                j.remove_compact_temp(&dir);
                return Err(e);
            }
        };
        rfs::renameat(&dir, temp_name.as_str(), &dir, j.name.as_str()).map_err(|e| {
            j.remove_compact_temp(&dir);
            StoreError::io("renaming compacted journal into", &j.path, e.into())
        })?;
        st.file = open_journal_file(&dir, &j.dir, &j.name)?;
        st.offset = len;
        st.lines = records.len() as u64;
        st.restarted = false;
        #[cfg(test)]
        {
            st.pinned_for_test = false;
        }
        drop(st);
        rfs::fsync(&dir).map_err(|e| StoreError::io("syncing directory", &j.dir, e.into()))?;
        Ok(())
    }
}

fn write_compacted<T: Serialize>(
    path: &Path,
    dir: &OwnedFd,
    temp_name: &str,
    temp: &Path,
    records: &[T],
) -> Result<u64, StoreError> {
    let fd = rfs::openat(
        dir,
        temp_name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        // Records may hold URLs as given, with credentials: owner only.
        Mode::from_raw_mode(0o600),
    )
    .map_err(|e| StoreError::io("creating journal temporary file", temp, e.into()))?;
    let mut out = File::from(fd);
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut len = 0u64;
    for r in records {
        encode(path, r, &mut buf)?;
        if buf.len() >= 64 * 1024 {
            out.write_all(&buf)
                .map_err(|e| StoreError::io("writing journal temporary file", temp, e))?;
            len += buf.len() as u64;
            buf.clear();
        }
    }
    out.write_all(&buf)
        .and_then(|()| out.sync_all())
        .map_err(|e| StoreError::io("writing journal temporary file", temp, e))?;
    len += buf.len() as u64;
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::fs::{self, OpenOptions};

    fn compact_temp_path(path: &Path) -> PathBuf {
        let mut name = path.file_name().unwrap().to_os_string();
        name.push(COMPACT_SUFFIX);
        path.with_file_name(name)
    }

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    struct Rec {
        n: u32,
        name: String,
    }

    fn rec(n: u32) -> Rec {
        Rec {
            n,
            name: format!("module-{n}\nwith a newline and \"quotes\""),
        }
    }

    #[test]
    fn append_replay_compact_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.journal");
        let j = Journal::<Rec>::open(&path).unwrap();
        assert!(j.replay().unwrap().is_empty());
        for n in 0..10 {
            j.append(&rec(n)).unwrap();
        }
        assert_eq!(j.replay().unwrap(), (0..10).map(rec).collect::<Vec<_>>());
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 10);
        assert!(text.lines().all(|l| l.len() > 9 && l.as_bytes()[8] == b' '));

        j.compact(&[rec(7), rec(8)]).unwrap();
        j.append(&rec(11)).unwrap();
        assert_eq!(j.replay().unwrap(), vec![rec(7), rec(8), rec(11)]);
        assert!(!compact_temp_path(&path).exists());
        drop(j);
        let j = Journal::<Rec>::open(&path).unwrap();
        assert_eq!(j.replay().unwrap(), vec![rec(7), rec(8), rec(11)]);
    }

    /// A torn write of the last record, cut at every byte offset, never loses
    /// an older record, and the next append after reopening is intact.
    #[test]
    fn torn_last_record_at_every_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let j = Journal::<Rec>::open(&path).unwrap();
        for n in 0..5 {
            j.append(&rec(n)).unwrap();
        }
        let before_last = fs::metadata(&path).unwrap().len();
        j.append(&rec(5)).unwrap();
        drop(j);
        let full = fs::read(&path).unwrap();
        let older: Vec<Rec> = (0..5).map(rec).collect();
        for cut in before_last..=full.len() as u64 {
            let p = dir.path().join(format!("cut-{cut}"));
            fs::write(&p, &full[..usize::try_from(cut).unwrap()]).unwrap();
            let j = Journal::<Rec>::open(&p).unwrap();
            let got = j.replay_report().unwrap();
            if cut == full.len() as u64 {
                assert_eq!(got.records, (0..6).map(rec).collect::<Vec<_>>());
                continue;
            }
            assert_eq!(got.records, older, "cut at {cut}");
            assert_eq!(got.corrupt, 0, "cut at {cut}");
            j.append(&rec(99)).unwrap();
            let mut want = older.clone();
            want.push(rec(99));
            assert_eq!(j.replay().unwrap(), want, "append after cut at {cut}");
        }
    }

    /// Without reopening (so without the truncation on open), replay of a file
    /// with a torn tail reports it and keeps everything before it.
    #[test]
    fn replay_reports_torn_tail_and_skips_corrupt_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let j = Journal::<Rec>::open(&path).unwrap();
        for n in 0..4 {
            j.append(&rec(n)).unwrap();
        }
        // Flip one byte of the JSON of record 1: its checksum no longer matches.
        let mut bytes = fs::read(&path).unwrap();
        let second_line = bytes.iter().position(|&b| b == b'\n').unwrap() + 1;
        bytes[second_line + 15] ^= 0x01;
        bytes.extend_from_slice(b"0badc0de {\"n\":");
        fs::write(&path, &bytes).unwrap();
        let got = j.replay_report().unwrap();
        assert_eq!(got.records, vec![rec(0), rec(2), rec(3)]);
        assert_eq!(got.corrupt, 1);
        assert!(got.torn_tail);
        // A line with a valid checksum but the wrong shape is skipped too.
        let json = br#"{"other":1}"#;
        let line = format!(
            "{:08x} {}\n",
            crc32fast::hash(json),
            std::str::from_utf8(json).unwrap()
        );
        let j = Journal::<Rec>::open(&path).unwrap();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(line.as_bytes()).unwrap();
        j.append(&rec(4)).unwrap();
        let got = j.replay_report().unwrap();
        assert_eq!(got.records, vec![rec(0), rec(2), rec(3), rec(4)]);
        assert_eq!(got.corrupt, 2);
        assert!(!got.torn_tail);
    }

    /// Disk full during an append: writing to `/dev/full` makes the kernel
    /// return a real ENOSPC. (No disk can be filled safely in a test, so the
    /// journal's descriptor is swapped for `/dev/full`.) The error names the
    /// journal and the operation, and the records already on disk stay intact.
    #[test]
    fn enospc_on_append_is_clear_and_keeps_older_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let j = Journal::<Rec>::open(&path).unwrap();
        j.append(&rec(1)).unwrap();
        let full = OpenOptions::new().write(true).open("/dev/full").unwrap();
        j.replace_file_for_test(full);
        let err = j.append(&rec(2)).unwrap_err();
        assert!(err.is_no_space(), "{err}");
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!("appending to journal {}: ", path.display())),
            "{msg}"
        );
        assert!(msg.contains("No space left on device"), "{msg}");
        assert_eq!(j.replay().unwrap(), vec![rec(1)]);
    }

    #[test]
    fn open_fails_clearly_when_parent_is_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain");
        fs::write(&file, b"x").unwrap();
        let path = file.join("j");
        let err = Journal::<Rec>::open(&path).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("Not a directory"), "{msg}");
    }

    /// Appends from several threads interleave as whole lines: every record
    /// comes back, each thread's in its own order.
    #[test]
    fn concurrent_appends_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let j = std::sync::Arc::new(Journal::<Rec>::open(dir.path().join("j")).unwrap());
        let threads: Vec<_> = (0..4u32)
            .map(|t| {
                let j = std::sync::Arc::clone(&j);
                std::thread::spawn(move || {
                    for i in 0..50 {
                        j.append(&rec(t * 1000 + i)).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let got: Vec<u32> = j.replay().unwrap().into_iter().map(|r| r.n).collect();
        assert_eq!(got.len(), 200);
        for t in 0..4u32 {
            let mine: Vec<u32> = got.iter().copied().filter(|n| n / 1000 == t).collect();
            assert_eq!(mine, (0..50).map(|i| t * 1000 + i).collect::<Vec<_>>());
        }
    }

    /// Lines that straddle the reader's chunks, and lines longer than a
    /// chunk, come back intact; records are handed out in order by
    /// `read_new_each`, and a later read continues after them.
    #[test]
    fn lines_across_and_longer_than_read_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::<Rec>::open(dir.path().join("j")).unwrap();
        let big = |n: u32, len: usize| Rec {
            n,
            name: "x".repeat(len),
        };
        let mut want = Vec::new();
        for n in 0..2000 {
            // Odd lengths, so line ends fall everywhere in the chunks.
            want.push(big(n, 97 + (n as usize * 131) % 700));
        }
        want.push(big(2000, 3 * READ_CHUNK + 17));
        want.push(big(2001, 5));
        for r in &want {
            j.append(r).unwrap();
        }
        let other = Journal::<Rec>::open(dir.path().join("j")).unwrap();
        let mut got = Vec::new();
        let read = other.read_new_each(&mut |r| got.push(r)).unwrap();
        assert_eq!(got, want);
        assert_eq!(read.corrupt, 0);
        assert!(!read.torn_tail);
        assert_eq!(other.lines(), want.len() as u64);
        j.append(&rec(7)).unwrap();
        assert_eq!(other.read_new().unwrap().records, vec![rec(7)]);
        assert_eq!(j.replay().unwrap().len(), want.len() + 1);
    }

    /// The checksum prefix: 8 hex digits (upper case read too), then a space;
    /// anything else makes the line corrupt.
    #[test]
    fn checksum_prefix_is_eight_hex_digits() {
        let json = br#"{"n":1,"name":"a"}"#;
        let crc = crc32fast::hash(json);
        let line = |prefix: String| [prefix.as_bytes(), b" ", json].concat();
        let one = Rec {
            n: 1,
            name: "a".into(),
        };
        assert_eq!(
            decode::<Rec>(&line(format!("{crc:08x}"))),
            Some(one.clone())
        );
        assert_eq!(decode::<Rec>(&line(format!("{crc:08X}"))), Some(one));
        assert_eq!(decode::<Rec>(&line(format!("{:08x}", crc ^ 1))), None);
        assert_eq!(
            decode::<Rec>(&line(format!("+{:07x}", crc & 0x0fff_ffff))),
            None
        );
        assert_eq!(
            decode::<Rec>(&line(format!("{crc:x}").chars().take(7).collect())),
            None
        );
        assert_eq!(decode::<Rec>(b""), None);
    }

    #[test]
    fn leftover_compaction_file_is_removed_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let j = Journal::<Rec>::open(&path).unwrap();
        j.append(&rec(1)).unwrap();
        drop(j);
        fs::write(compact_temp_path(&path), b"half a compaction").unwrap();
        let j = Journal::<Rec>::open(&path).unwrap();
        assert!(!compact_temp_path(&path).exists());
        assert_eq!(j.replay().unwrap(), vec![rec(1)]);
    }
}
