//! Cross-process advisory locks (`flock`) on files in the store directory, and
//! the no-follow file opening every file the store creates goes through.
//!
//! Rules kept here, for every lock file:
//! - it is opened with `O_NOFOLLOW` relative to a descriptor of its directory
//!   (itself opened `O_NOFOLLOW | O_DIRECTORY`), so a symlink at its name is
//!   never followed: it is removed (an `unlink` removes the link, not its
//!   target) and a fresh regular file created in its place;
//! - after the lock is taken, the name must still refer to the locked inode
//!   (someone may have deleted the file in between); otherwise the lock is
//!   worthless and is taken again;
//! - every wait is bounded by a deadline, and reported once through `on_wait`.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::fs::{self as rfs, AtFlags, FileType, FlockOperation, Mode, OFlags};
use rustix::io::Errno;

use crate::StoreError;

/// How often a lock wait polls (the wait is bounded, so it cannot block in `flock`).
const POLL_MAX: Duration = Duration::from_millis(20);

/// How a lock is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LockMode {
    Shared,
    Exclusive,
}

/// Opens the store (or journal) directory itself. Its path is the user's
/// configuration and may go through symlinks; the files in it may not.
pub(crate) fn open_dir(dir: &Path) -> io::Result<OwnedFd> {
    Ok(rfs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Opens (creating if needed) the subdirectory `name` of `parent`, replacing a
/// symlink or a non-directory at that name by a fresh directory.
pub(crate) fn open_subdir(
    parent: &OwnedFd,
    parent_path: &Path,
    name: &str,
) -> Result<OwnedFd, StoreError> {
    let path = parent_path.join(name);
    for _ in 0..8 {
        match rfs::openat(
            parent,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => return Ok(fd),
            Err(Errno::NOENT) => match rfs::mkdirat(parent, name, Mode::from_raw_mode(0o700)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(StoreError::io("creating lock directory", &path, e.into())),
            },
            Err(Errno::LOOP | Errno::NOTDIR) => {
                tracing::warn!(path = %path.display(), "replacing a symbolic link or file where the lock directory belongs");
                match rfs::unlinkat(parent, name, AtFlags::empty()) {
                    Ok(()) | Err(Errno::NOENT) => {}
                    Err(e) => {
                        return Err(StoreError::io(
                            "removing a symbolic link at lock directory",
                            &path,
                            e.into(),
                        ));
                    }
                }
            }
            Err(e) => return Err(StoreError::io("opening lock directory", &path, e.into())),
        }
    }
    Err(StoreError::io(
        "opening lock directory",
        &path,
        io::Error::other("it keeps being replaced"),
    ))
}

/// Opens (creating if needed) a regular file `name` in `dir` for read and
/// write, never through a symlink: a symlink (dangling or not) at the name is
/// unlinked and a fresh file created; another non-regular file is an error.
pub(crate) fn open_or_create_nofollow(
    dir: &OwnedFd,
    dir_path: &Path,
    name: &str,
    what: &'static str,
) -> Result<File, StoreError> {
    let path = dir_path.join(name);
    for _ in 0..8 {
        match rfs::openat(
            dir,
            name,
            OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
            Mode::from_raw_mode(0o600),
        ) {
            Ok(fd) => {
                let st = rfs::fstat(&fd).map_err(|e| StoreError::io(what, &path, e.into()))?;
                if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
                    return Err(StoreError::io(
                        what,
                        &path,
                        io::Error::other("not a regular file"),
                    ));
                }
                return Ok(File::from(fd));
            }
            // O_NOFOLLOW on a symlink (dangling or not): never written through.
            Err(Errno::LOOP) => {
                tracing::warn!(path = %path.display(), "replacing a symbolic link where a store file belongs");
                match rfs::unlinkat(dir, name, AtFlags::empty()) {
                    Ok(()) | Err(Errno::NOENT) => {}
                    Err(e) => {
                        return Err(StoreError::io(
                            "removing a symbolic link at",
                            &path,
                            e.into(),
                        ));
                    }
                }
            }
            Err(e) => return Err(StoreError::io(what, &path, e.into())),
        }
    }
    Err(StoreError::io(
        what,
        &path,
        io::Error::other("a symbolic link keeps reappearing at this name"),
    ))
}

/// Whether `name` in `dir` is (still) the inode open as `file`.
pub(crate) fn same_inode(dir: &OwnedFd, name: &str, file: &impl AsFd) -> bool {
    let (Ok(at), Ok(open)) = (
        rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW),
        rfs::fstat(file),
    ) else {
        return false;
    };
    at.st_dev == open.st_dev && at.st_ino == open.st_ino
}

/// Tries to take `mode` on `file` until `deadline`, polling; `on_wait` runs
/// once, when the first try finds the lock held. `Ok(false)`: timed out.
pub(crate) fn flock_until(
    file: &impl AsFd,
    mode: LockMode,
    deadline: Instant,
    on_wait: &mut dyn FnMut(),
) -> io::Result<bool> {
    let op = match mode {
        LockMode::Shared => FlockOperation::NonBlockingLockShared,
        LockMode::Exclusive => FlockOperation::NonBlockingLockExclusive,
    };
    let mut waited = false;
    let mut pause = Duration::from_millis(1);
    loop {
        match rfs::flock(file, op) {
            Ok(()) => return Ok(true),
            Err(Errno::WOULDBLOCK) => {}
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
        if !waited {
            waited = true;
            on_wait();
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(false);
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(POLL_MAX);
    }
}

/// A held lock on a lock file. Released (and, for per-key locks, the file
/// removed) when dropped.
#[derive(Debug)]
pub struct FileLock {
    file: File,
    dir: OwnedFd,
    name: String,
    path: PathBuf,
    remove_on_release: bool,
}

impl FileLock {
    /// Takes `mode` on the lock file `name` in `dir` (created if needed, never
    /// through a symlink), waiting until `deadline`. `Ok(None)`: timed out.
    pub(crate) fn acquire(
        dir: OwnedFd,
        dir_path: &Path,
        name: &str,
        mode: LockMode,
        deadline: Instant,
        remove_on_release: bool,
        on_wait: &mut dyn FnMut(),
    ) -> Result<Option<Self>, StoreError> {
        let path = dir_path.join(name);
        loop {
            let file = open_or_create_nofollow(&dir, dir_path, name, "opening lock file")?;
            let locked = flock_until(&file, mode, deadline, on_wait)
                .map_err(|e| StoreError::io("locking", &path, e))?;
            if !locked {
                return Ok(None);
            }
            // The holder before us may have removed the file on release: a
            // lock on an unlinked inode excludes nobody. Take it again.
            if same_inode(&dir, name, &file) {
                return Ok(Some(Self {
                    file,
                    dir,
                    name: name.to_owned(),
                    path,
                    remove_on_release,
                }));
            }
        }
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        // Removed while still held, so nobody can lock this inode and then
        // find it at the name: a waiter that opened it re-checks and retries.
        if self.remove_on_release
            && same_inode(&self.dir, &self.name, &self.file)
            && let Err(e) = rfs::unlinkat(&self.dir, self.name.as_str(), AtFlags::empty())
            && e != Errno::NOENT
        {
            tracing::debug!(path = %self.path.display(), error = %e, "could not remove lock file");
        }
    }
}

/// Whether the temporary file at `name` in `dir` was abandoned (its writer's
/// `flock` is free: the writer died), and if so removes it. A symlink at a
/// temporary name is removed too (unlinking a link never touches its target).
/// `Ok(false)`: a live writer owns it, or it is gone.
pub(crate) fn remove_if_abandoned(dir: &OwnedFd, name: &str) -> io::Result<bool> {
    let fd = match rfs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(false),
        Err(Errno::LOOP) => {
            return match rfs::unlinkat(dir, name, AtFlags::empty()) {
                Ok(()) => Ok(true),
                Err(Errno::NOENT) => Ok(false),
                Err(e) => Err(e.into()),
            };
        }
        Err(e) => return Err(e.into()),
    };
    match rfs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(Errno::WOULDBLOCK) => return Ok(false),
        Err(e) => return Err(e.into()),
    }
    // Holding its lock, so a writer that created it cannot be between its
    // create and its lock (it re-checks the name after locking, see `Ingest`).
    if !same_inode(dir, name, &fd) {
        return Ok(false);
    }
    match rfs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) => Ok(true),
        Err(Errno::NOENT) => Ok(false),
        Err(e) => Err(e.into()),
    }
}
