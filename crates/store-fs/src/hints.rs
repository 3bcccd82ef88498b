//! Hint files: one small record per file in a subdirectory of the store
//! (the cache keeps `.keys/` and `.urls/` there), so that a process can
//! answer a single lookup with one `open` instead of reading the whole
//! journal.
//!
//! A hint is never the source of truth: the journal is. A missing,
//! unreadable or stale hint only sends the reader down the full path, and
//! whatever a hint names is checked against the files before it is used.
//! So hints are written without `fsync`, best effort, and a failure to write
//! one is a debug line, never an error of the command.
//!
//! The same file rules as the rest of the store: the directory is opened
//! `O_NOFOLLOW | O_DIRECTORY` (a symlink or a file at its name is replaced by
//! a fresh directory), every hint is opened `O_NOFOLLOW`, written to a fresh
//! temporary file (`O_EXCL`, mode 0600) and renamed over its name, and names
//! are checked to be plain (no `/`, no leading dot).

use std::fs::File;
use std::io::{self, Read as _, Write as _};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use crate::StoreError;
use crate::locks::{open_dir, open_subdir};

/// A hint larger than this is not a hint (nothing the cache writes is).
const MAX_HINT: u64 = 4096;

/// How long a hint directory must have been left unchanged before its
/// count is remembered ([`HintDir::count_known`]): longer than the coarsest
/// timestamp granularity of a file system we may run on (FAT's 2 s), so any
/// later change gives the directory a different modification time.
const SETTLED: std::time::Duration = std::time::Duration::from_secs(3);

/// A subdirectory of hint files.
#[derive(Debug)]
pub struct HintDir {
    fd: OwnedFd,
    /// The store directory, for the remembered count beside this one.
    parent: OwnedFd,
    path: PathBuf,
    /// Name of the remembered count in the store directory: `<name>.count`.
    marker: String,
}

/// What identifies a state of a directory's list of names: any create,
/// rename or unlink in it changes its modification (and change) time.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DirState {
    /// Device, inode, size, modification and change times (with their
    /// nanoseconds), as text: what the marker records and compares.
    id: String,
    /// Seconds of the modification time.
    mtime: i128,
}

impl DirState {
    fn of(fd: &OwnedFd) -> io::Result<Self> {
        let st = rfs::fstat(fd)?;
        Ok(Self {
            id: format!(
                "{} {} {} {} {} {} {}",
                st.st_dev,
                st.st_ino,
                st.st_size,
                st.st_mtime,
                st.st_mtime_nsec,
                st.st_ctime,
                st.st_ctime_nsec
            ),
            mtime: st.st_mtime.into(),
        })
    }

    /// Whether the directory was last changed long enough ago that a change
    /// now would give it another timestamp.
    fn settled(&self) -> bool {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i128::from(d.as_secs()));
        let limit = now - i128::from(SETTLED.as_secs());
        self.mtime < limit
    }

    /// The marker's text: this state and the count taken in it.
    fn line(&self, count: usize) -> String {
        format!("v1 {} {count}\n", self.id)
    }

    /// The count a marker's text records, if it records this state.
    fn count_in(&self, text: &str) -> Option<usize> {
        let rest = text.strip_prefix("v1 ")?.strip_suffix('\n')?;
        let (id, count) = rest.rsplit_once(' ')?;
        if id != self.id {
            return None;
        }
        count.parse().ok()
    }
}

/// The content of the small regular file `name` in `dir`, opened without
/// following a symlink; `None` if there is none or it is anything else.
fn read_small(dir: &OwnedFd, name: &str) -> Option<Vec<u8>> {
    let fd = rfs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::empty(),
    )
    .ok()?;
    let st = rfs::fstat(&fd).ok()?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile
        || u64::try_from(st.st_size).unwrap_or(u64::MAX) > MAX_HINT
    {
        return None;
    }
    let mut out = Vec::new();
    File::from(fd)
        .take(MAX_HINT + 1)
        .read_to_end(&mut out)
        .ok()?;
    (out.len() as u64 <= MAX_HINT).then_some(out)
}

/// Writes `bytes` as file `name` of `dir`: a fresh temporary file (`O_EXCL`,
/// mode 0600, locked so that a store recovery does not take it for an
/// abandoned ingest) renamed over the name.
fn replace_file(dir: &OwnedFd, name: &str, bytes: &[u8]) -> io::Result<()> {
    let temp = crate::names::temp_name();
    let fd = rfs::openat(
        dir,
        &temp,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )?;
    let _ = rfs::flock(&fd, rfs::FlockOperation::NonBlockingLockExclusive);
    let written = File::from(fd).write_all(bytes);
    let renamed =
        written.and_then(|()| rfs::renameat(dir, &temp, dir, name).map_err(io::Error::from));
    if renamed.is_err() {
        let _ = rfs::unlinkat(dir, &temp, AtFlags::empty());
    }
    renamed
}

fn plain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn invalid(name: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{name:?} is not a plain hint name"),
    )
}

impl HintDir {
    /// Opens (creating if needed, mode 0700) the hint directory `name` (a
    /// dot-name such as `.keys`) of the store directory `store_dir`.
    ///
    /// # Errors
    /// [`StoreError::Io`] naming the directory if it cannot be created or opened.
    pub fn open(store_dir: &Path, name: &str) -> Result<Self, StoreError> {
        let parent = open_dir(store_dir)
            .map_err(|e| StoreError::io("opening store directory", store_dir, e))?;
        let fd = open_subdir(&parent, store_dir, name)?;
        Ok(Self {
            fd,
            parent,
            path: store_dir.join(name),
            marker: format!("{name}.count"),
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The content of hint `name`, or `None` if there is none (or it is not a
    /// regular file, or is too large to be one).
    pub fn get(&self, name: &str) -> Option<Vec<u8>> {
        if !plain(name) {
            return None;
        }
        read_small(&self.fd, name)
    }

    /// Writes hint `name` (a fresh file renamed over the old one: a reader
    /// sees the old content or the new, never a mix).
    ///
    /// # Errors
    /// [`StoreError::Io`] if the name is not plain or the file cannot be written.
    pub fn put(&self, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let path = self.path.join(name);
        if !plain(name) {
            return Err(StoreError::io("writing hint", &path, invalid(name)));
        }
        replace_file(&self.fd, name, bytes).map_err(|e| StoreError::io("writing hint", &path, e))
    }

    /// Removes hint `name` (no error if there is none).
    ///
    /// # Errors
    /// [`StoreError::Io`] if it exists and cannot be removed.
    pub fn remove(&self, name: &str) -> Result<(), StoreError> {
        let path = self.path.join(name);
        if !plain(name) {
            return Err(StoreError::io("removing hint", &path, invalid(name)));
        }
        match rfs::unlinkat(&self.fd, name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(StoreError::io("removing hint", &path, e.into())),
        }
    }

    /// How many files there are, without collecting their names: the cheap
    /// check before a full comparison. A temporary file left by an
    /// interrupted write counts too, so the count differs from the live
    /// hints' and the comparison that follows ([`HintDir::names`]) removes it.
    ///
    /// # Errors
    /// [`StoreError::Io`] if the directory cannot be listed.
    pub fn count(&self) -> Result<usize, StoreError> {
        let dir = std::fs::read_dir(&self.path)
            .map_err(|e| StoreError::io("listing hints", &self.path, e))?;
        let mut n = 0;
        for entry in dir {
            entry.map_err(|e| StoreError::io("listing hints", &self.path, e))?;
            n += 1;
        }
        Ok(n)
    }

    /// [`count`](Self::count) without listing the directory when it has not
    /// changed since a count was last remembered: the count is kept beside
    /// the directory (`<store>/<name>.count`) with the directory's identity,
    /// size and modification and change times, and believed only while
    /// those are the same. It is remembered only when the directory did not
    /// change while it was counted and had been left alone for a few seconds
    /// before (a change within the same timestamp tick would otherwise go
    /// unseen). Remembering is best effort; a remembered count is only ever a
    /// reason to skip a re-sync of hints, which are never a source of truth.
    ///
    /// # Errors
    /// As [`count`](Self::count).
    pub fn count_known(&self) -> Result<usize, StoreError> {
        let Ok(before) = DirState::of(&self.fd) else {
            return self.count();
        };
        let known = read_small(&self.parent, &self.marker)
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|text| before.count_in(&text));
        if let Some(n) = known {
            return Ok(n);
        }
        let n = self.count()?;
        if before.settled()
            && DirState::of(&self.fd).is_ok_and(|after| after == before)
            && let Err(e) = replace_file(&self.parent, &self.marker, before.line(n).as_bytes())
        {
            tracing::debug!(error = %e, dir = %self.path.display(), "remembering the hint count failed");
        }
        Ok(n)
    }

    /// The names of every hint, and removes temporary files left by
    /// interrupted writes.
    ///
    /// # Errors
    /// [`StoreError::Io`] if the directory cannot be listed.
    pub fn names(&self) -> Result<Vec<String>, StoreError> {
        let dir = std::fs::read_dir(&self.path)
            .map_err(|e| StoreError::io("listing hints", &self.path, e))?;
        let mut out = Vec::new();
        for entry in dir {
            let entry = entry.map_err(|e| StoreError::io("listing hints", &self.path, e))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if name.starts_with(crate::names::TEMP_PREFIX) {
                let _ = rfs::unlinkat(&self.fd, name.as_str(), AtFlags::empty());
            } else if plain(&name) {
                out.push(name);
            }
        }
        Ok(out)
    }
}

/// Checks the module file `<digest>.wasm` in `store_dir` without opening the
/// store (no directory scan): `Some(size)` if it is a regular file whose
/// content hashes to `digest` and starts like a Wasm module, by its
/// verification mark or by hashing it (which then marks it); `None` if it
/// is missing or anything else.
///
/// # Errors
/// [`StoreError::Io`] if it exists but cannot be read.
pub fn check_module(
    store_dir: &Path,
    digest: &crate::Sha256Digest,
) -> Result<Option<u64>, StoreError> {
    crate::store::check_file(&store_dir.join(digest.file_name()), digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_remove_and_list() {
        let dir = tempfile::tempdir().unwrap();
        let h = HintDir::open(dir.path(), ".keys").unwrap();
        assert_eq!(h.get("abc"), None);
        h.put("abc", b"one").unwrap();
        h.put("abc", b"two").unwrap();
        assert_eq!(h.get("abc").as_deref(), Some(&b"two"[..]));
        assert_eq!(h.names().unwrap(), vec!["abc".to_owned()]);
        h.remove("abc").unwrap();
        h.remove("abc").unwrap();
        assert_eq!(h.get("abc"), None);
        assert!(h.put("../x", b"").is_err());
        assert!(h.put(".hidden", b"").is_err());
        assert_eq!(h.get("../x"), None);
    }

    #[test]
    fn symlinks_are_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        // A symlink where the directory belongs is replaced by a directory.
        std::os::unix::fs::symlink(dir.path(), dir.path().join(".keys")).unwrap();
        let h = HintDir::open(dir.path(), ".keys").unwrap();
        assert!(
            std::fs::symlink_metadata(dir.path().join(".keys"))
                .unwrap()
                .is_dir()
        );
        // A symlink at a hint's name is neither read nor written through.
        std::os::unix::fs::symlink(&victim, h.path().join("k")).unwrap();
        assert_eq!(h.get("k"), None);
        h.put("k", b"hint").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert_eq!(h.get("k").as_deref(), Some(&b"hint"[..]));
    }

    #[test]
    fn an_oversized_hint_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let h = HintDir::open(dir.path(), ".urls").unwrap();
        std::fs::write(h.path().join("big"), vec![b'x'; 10_000]).unwrap();
        assert_eq!(h.get("big"), None);
    }

    /// Sets the directory's modification time `secs` into the past, as if
    /// nothing had changed in it since.
    fn backdate(dir: &Path, secs: u64) {
        let then = std::time::SystemTime::now() - std::time::Duration::from_secs(secs);
        File::open(dir).unwrap().set_modified(then).unwrap();
    }

    #[test]
    fn a_count_is_remembered_only_while_the_directory_is_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let h = HintDir::open(dir.path(), ".keys").unwrap();
        let marker = dir.path().join(".keys.count");
        h.put("a", b"1").unwrap();
        h.put("b", b"2").unwrap();
        // Just changed: counted, not remembered (a change within the same
        // timestamp tick would go unseen).
        assert_eq!(h.count_known().unwrap(), 2);
        assert!(!marker.exists());
        backdate(h.path(), 60);
        assert_eq!(h.count_known().unwrap(), 2);
        let text = std::fs::read_to_string(&marker).unwrap();
        // Believed without listing while the directory is as recorded...
        let (state, _) = text.trim_end().rsplit_once(' ').unwrap();
        std::fs::write(&marker, format!("{state} 7\n")).unwrap();
        assert_eq!(h.count_known().unwrap(), 7);
        // ...and not once a hint is written or removed.
        h.put("c", b"3").unwrap();
        assert_eq!(h.count_known().unwrap(), 3);
        backdate(h.path(), 60);
        assert_eq!(h.count_known().unwrap(), 3);
        h.remove("a").unwrap();
        assert_eq!(h.count_known().unwrap(), 2);
        // Garbage in the marker is no count.
        backdate(h.path(), 60);
        std::fs::write(&marker, b"v1 junk").unwrap();
        assert_eq!(h.count_known().unwrap(), 2);
        assert!(std::fs::read_to_string(&marker).unwrap().ends_with(" 2\n"));
    }

    #[test]
    fn the_remembered_count_is_never_written_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let h = HintDir::open(dir.path(), ".keys").unwrap();
        h.put("a", b"1").unwrap();
        backdate(h.path(), 60);
        let marker = dir.path().join(".keys.count");
        std::os::unix::fs::symlink(&victim, &marker).unwrap();
        assert_eq!(h.count_known().unwrap(), 1);
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert!(
            std::fs::symlink_metadata(&marker)
                .unwrap()
                .file_type()
                .is_file()
        );
    }

    #[test]
    fn a_temporary_file_left_by_an_interrupted_write_is_counted_then_removed() {
        let dir = tempfile::tempdir().unwrap();
        let h = HintDir::open(dir.path(), ".keys").unwrap();
        h.put("a", b"1").unwrap();
        let left = h.path().join(crate::names::temp_name());
        std::fs::write(&left, b"half").unwrap();
        // Counted, so it differs from the one live hint and a re-sync lists
        // the names, which removes it.
        assert_eq!(h.count().unwrap(), 2);
        assert_eq!(h.names().unwrap(), vec!["a".to_owned()]);
        assert!(!left.exists());
        assert_eq!(h.count().unwrap(), 1);
    }
}
