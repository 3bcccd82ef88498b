//! Streaming ingest: chunks in, a checked module at its final name out.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use wasm_cache_core::{ModuleSink, Sha256Digest, check_wasm_header};

use crate::StoreError;
use crate::hasher::StreamHasher;
use crate::names;
use crate::store::Inner;

/// Bytes gathered before one `write(2)`: few, large writes.
pub(crate) const WRITE_CHUNK: usize = 1024 * 1024;

/// Bytes written between two requests to start writeback
/// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`), so the `fsync` before the
/// rename finds little left to write.
pub(crate) const WRITEBACK_EVERY: u64 = 8 * 1024 * 1024;

/// A module being written into the store.
///
/// Created by [`FsStore::ingest`](crate::FsStore::ingest). Each chunk given to
/// [`ModuleSink::write`] is written to a temporary file
/// `.tmp-<random>.wasm.partial` in the store directory in writes of 1 MiB (a
/// buffer that grows to that size at most, so memory does not grow with the
/// module) and hashed (ring's SHA-256): each written 1 MiB buffer goes to a
/// hashing thread of this ingest, so the caller's task goes back to reading
/// while it is hashed (at most two buffers wait; a smaller module is hashed
/// inline and starts no thread). Every 8 MiB the kernel is asked to start writing the
/// file back (`sync_file_range(SYNC_FILE_RANGE_WRITE)`, Linux), so the
/// `fsync` of the commit waits for little. The chunk that would take the
/// module past its size limit fails, and so does every later call.
///
/// [`commit`](Self::commit) checks and installs the module; dropping the ingest
/// without committing (or [`abort`](Self::abort)) deletes the temporary file.
#[derive(Debug)]
pub struct Ingest {
    store: Arc<Inner>,
    temp: PathBuf,
    out: Option<Output>,
    hasher: StreamHasher,
    size: u64,
    max_size: u64,
    expected: Option<Sha256Digest>,
    header: [u8; 8],
    failure: Option<StoreError>,
    finished: bool,
}

/// The temporary file and what is buffered for it.
#[derive(Debug)]
struct Output {
    file: File,
    buf: Vec<u8>,
    /// The first `hashed` bytes of `buf` are already hashed
    /// ([`Ingest::digest`] hashes the tail before it is written).
    hashed: usize,
    /// Bytes written to the file.
    written: u64,
    /// Bytes whose writeback was started.
    flushed_back: u64,
}

impl Output {
    fn new(file: File) -> Self {
        Self {
            file,
            buf: Vec::new(),
            hashed: 0,
            written: 0,
            flushed_back: 0,
        }
    }

    /// Buffers `chunk`, writing (and handing to `hasher`) whenever
    /// [`WRITE_CHUNK`] bytes are gathered.
    fn write(&mut self, mut chunk: &[u8], hasher: &mut StreamHasher) -> io::Result<()> {
        while !chunk.is_empty() {
            if self.buf.capacity() == 0 {
                // Small modules stay small; large ones reach the full buffer
                // after a few doublings.
                self.buf.reserve(
                    chunk
                        .len()
                        .next_power_of_two()
                        .clamp(64 * 1024, WRITE_CHUNK),
                );
            }
            let take = (WRITE_CHUNK - self.buf.len()).min(chunk.len());
            self.buf.extend_from_slice(&chunk[..take]);
            chunk = &chunk[take..];
            if self.buf.len() == WRITE_CHUNK {
                self.flush(hasher)?;
            }
        }
        Ok(())
    }

    /// Hashes what is buffered and not hashed yet, without writing it.
    fn hash_tail(&mut self, hasher: &mut StreamHasher) {
        hasher.update(&self.buf[self.hashed..]);
        self.hashed = self.buf.len();
    }

    /// Writes what is buffered, then hashes it: a full buffer on the hashing
    /// thread (which hands back an empty one), a partial one inline.
    fn flush(&mut self, hasher: &mut StreamHasher) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let buf = std::mem::take(&mut self.buf);
        let r = self.write_file(&buf);
        if r.is_err() {
            // Nothing more will be written; the hash no longer matters.
            self.buf = buf;
            return r;
        }
        if self.hashed == 0 && buf.len() == WRITE_CHUNK {
            self.buf = hasher.update_owned(buf, WRITE_CHUNK);
        } else {
            hasher.update(&buf[self.hashed..]);
            self.buf = buf;
            self.buf.clear();
        }
        self.hashed = 0;
        Ok(())
    }

    fn write_file(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all(bytes)?;
        self.written += bytes.len() as u64;
        if self.written - self.flushed_back >= WRITEBACK_EVERY {
            crate::writeback::start(
                &self.file,
                self.flushed_back,
                self.written - self.flushed_back,
            );
            self.flushed_back = self.written;
        }
        Ok(())
    }

    /// Writes what is buffered and returns the file.
    fn finish(mut self, hasher: &mut StreamHasher) -> io::Result<File> {
        self.flush(hasher)?;
        Ok(self.file)
    }
}

/// A module installed by [`Ingest::commit`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Committed {
    /// The module's sha256.
    pub digest: Sha256Digest,
    /// Its size in bytes.
    pub size: u64,
    /// Its file, `<dir>/<hex>.wasm`.
    pub path: PathBuf,
    /// `true` when a verified file with this digest was already in place and was
    /// kept untouched (same inode, same mtime); the new bytes were discarded.
    pub already_present: bool,
}

/// Copies the part of `chunk` that falls in the first 8 bytes of the stream.
pub(crate) fn fill_header(header: &mut [u8; 8], offset: u64, chunk: &[u8]) {
    if let Ok(start) = usize::try_from(offset)
        && start < header.len()
    {
        let n = (header.len() - start).min(chunk.len());
        header[start..start + n].copy_from_slice(&chunk[..n]);
    }
}

pub(crate) fn finish_digest(ctx: ring::digest::Context) -> Sha256Digest {
    let d = ctx.finish();
    let mut bytes = [0u8; 32];
    bytes.copy_from_slice(d.as_ref());
    Sha256Digest::from_bytes(bytes)
}

impl Ingest {
    pub(crate) fn create(
        store: Arc<Inner>,
        expected: Option<Sha256Digest>,
        max_size: u64,
    ) -> Result<Self, StoreError> {
        let (temp, file) = create_owned_temp(store.dir())?;
        Ok(Self {
            store,
            temp,
            out: Some(Output::new(file)),
            hasher: StreamHasher::new(),
            size: 0,
            max_size,
            expected,
            header: [0; 8],
            failure: None,
            finished: false,
        })
    }

    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The sha256 of the bytes written so far: once the last chunk is in, the
    /// digest [`commit`](Self::commit) will install the module under, so a
    /// caller can hold its own per-digest lock across the commit.
    pub fn digest(&mut self) -> Sha256Digest {
        if let Some(out) = self.out.as_mut() {
            out.hash_tail(&mut self.hasher);
        }
        self.hasher.digest()
    }

    /// The temporary file being written.
    pub fn temp_path(&self) -> &Path {
        &self.temp
    }

    /// The error that made a [`write`](ModuleSink::write) fail, if one did.
    pub fn error(&self) -> Option<&StoreError> {
        self.failure.as_ref()
    }

    /// Abandons the ingest (the temporary file is deleted) and returns the
    /// error that made a [`write`](ModuleSink::write) fail, if one did: the
    /// store's own verdict (too large, invalid module...) rather than the
    /// generic sink error a fetcher reports for it.
    pub fn into_error(mut self) -> Option<StoreError> {
        self.failure.take()
    }

    /// Checks and installs the module:
    ///
    /// 1. a failed write fails the commit with that write's error;
    /// 2. the sha256 must equal `expected`, if one was given
    ///    ([`StoreError::DigestMismatch`]);
    /// 3. the first 8 bytes must be the Wasm magic and version 1
    ///    ([`StoreError::InvalidModule`]);
    /// 4. the buffer is flushed and the temporary file fsynced;
    /// 5. under the digest's lock, the file is renamed to `<hex>.wasm` and the
    ///    directory fsynced, unless a verified identical file is already there
    ///    (then it is kept and `already_present` is `true`).
    ///
    /// On any error the temporary file is deleted and the store is as before.
    ///
    /// # Errors
    /// As listed above, plus [`StoreError::Io`] for a failed flush, fsync or
    /// rename.
    pub fn commit(self) -> Result<Committed, StoreError> {
        self.commit_then(|_| ()).map(|(committed, ())| committed)
    }

    /// [`commit`](Self::commit), then `then` under the same digest lock, before
    /// anything else can remove the file: the one way to publish a module and
    /// record that something refers to it (the cache indexes it there) with no
    /// window in which a concurrent [`FsStore::remove_if`](crate::FsStore::remove_if)
    /// sees the file unreferenced. `then` must not call back into the store
    /// for the same digest, nor block.
    ///
    /// # Errors
    /// As [`commit`](Self::commit); `then` does not run on an error.
    pub fn commit_then<R>(
        mut self,
        then: impl FnOnce(&Committed) -> R,
    ) -> Result<(Committed, R), StoreError> {
        if let Some(e) = self.failure.take() {
            return Err(e);
        }
        let actual = self.digest();
        if let Some(expected) = self.expected
            && expected != actual
        {
            return Err(StoreError::DigestMismatch { expected, actual });
        }
        let header_len = usize::try_from(self.size).map_or(8, |s| s.min(8));
        check_wasm_header(&self.header[..header_len])
            .map_err(|reason| StoreError::InvalidModule { reason })?;
        let out = self.out.take().ok_or_else(|| StoreError::IngestFailed {
            path: self.temp.clone(),
            reason: "the temporary file is already closed".into(),
        })?;
        let file = out
            .finish(&mut self.hasher)
            .map_err(|e| StoreError::io("writing temporary file", &self.temp, e))?;
        // The verification mark (see `mark`), on the file's final state: the
        // rename that follows keeps device, inode, size and mtime.
        if let Ok(st) = rustix::fs::fstat(&file) {
            crate::mark::set(&file, &actual, &st);
        }
        file.sync_all()
            .map_err(|e| StoreError::io("syncing temporary file", &self.temp, e))?;
        // Still open (and so still locked: see `create_owned_temp`) while it is
        // renamed, so no other process's recovery can take it for abandoned.
        let committed = self.store.install(&self.temp, actual, self.size, then);
        drop(file);
        let committed = committed?;
        self.finished = true;
        Ok(committed)
    }

    /// Abandons the ingest and deletes the temporary file (the same as dropping
    /// it; a file that cannot be deleted is logged and removed by the next
    /// [`FsStore::open`](crate::FsStore::open)).
    pub fn abort(self) {
        drop(self);
    }

    fn fail(&mut self, err: StoreError) -> io::Error {
        let kind = match &err {
            StoreError::Io { source, .. } => source.kind(),
            StoreError::TooLarge { .. } => io::ErrorKind::FileTooLarge,
            _ => io::ErrorKind::Other,
        };
        // The returned error carries a copy a caller can find with
        // `StoreError::from_io`; the ingest keeps the original for `commit`.
        let copy = match &err {
            StoreError::TooLarge { limit } => StoreError::TooLarge { limit: *limit },
            StoreError::Io { op, path, source } => StoreError::Io {
                op,
                path: path.clone(),
                source: io::Error::new(source.kind(), source.to_string()),
            },
            other => StoreError::IngestFailed {
                path: self.temp.clone(),
                reason: other.to_string(),
            },
        };
        self.failure = Some(err);
        // Free the buffer now: nothing more will be written.
        self.out = None;
        io::Error::new(kind, copy)
    }

    #[cfg(test)]
    pub(crate) fn replace_output_for_test(&mut self, file: File) {
        self.out = Some(Output::new(file));
    }
}

/// Creates a fresh temporary file in `dir` (`O_CREAT | O_EXCL | O_NOFOLLOW`:
/// never an existing file, never through a symlink) and takes its exclusive
/// `flock`, held until the file is renamed into place or deleted. Another
/// process's [`FsStore::open`](crate::FsStore::open) deletes only temporary
/// files whose lock is free (their writer died), so deleting or replacing
/// `.lock` files cannot make it delete a live ingest's file.
///
/// Between the create and the lock a recovery could see the file unlocked and
/// delete it; the name is therefore checked to still be this inode once the
/// lock is held, and a new file created if it is not.
fn create_owned_temp(dir: &Path) -> Result<(PathBuf, File), StoreError> {
    use rustix::fs::{Mode, OFlags};
    let dir_fd = crate::locks::open_dir(dir)
        .map_err(|e| StoreError::io("creating temporary file in", dir, e))?;
    loop {
        let name = names::temp_name();
        let fd = rustix::fs::openat(
            &dir_fd,
            name.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        )
        .map_err(|e| StoreError::io("creating temporary file in", dir, e.into()))?;
        let temp = dir.join(&name);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let locked =
            crate::locks::flock_until(&fd, crate::locks::LockMode::Exclusive, deadline, &mut || {})
                .map_err(|e| StoreError::io("locking temporary file", &temp, e))?;
        if locked && crate::locks::same_inode(&dir_fd, &name, &fd) {
            return Ok((temp, File::from(fd)));
        }
        // Deleted by a recovery between our create and our lock (or, absurdly,
        // locked by someone else for 10 s): try a new name.
        if crate::locks::same_inode(&dir_fd, &name, &fd) {
            let _ = rustix::fs::unlinkat(&dir_fd, name.as_str(), rustix::fs::AtFlags::empty());
        }
    }
}

impl ModuleSink for Ingest {
    fn write(&mut self, chunk: &[u8]) -> io::Result<()> {
        if let Some(e) = &self.failure {
            return Err(io::Error::other(StoreError::IngestFailed {
                path: self.temp.clone(),
                reason: e.to_string(),
            }));
        }
        let new_size = self.size.saturating_add(chunk.len() as u64);
        if new_size > self.max_size {
            let limit = self.max_size;
            return Err(self.fail(StoreError::TooLarge { limit }));
        }
        let Some(out) = self.out.as_mut() else {
            return Err(io::Error::other(StoreError::IngestFailed {
                path: self.temp.clone(),
                reason: "the temporary file is already closed".into(),
            }));
        };
        if let Err(e) = out.write(chunk, &mut self.hasher) {
            let err = StoreError::io("writing temporary file", &self.temp, e);
            return Err(self.fail(err));
        }
        fill_header(&mut self.header, self.size, chunk);
        self.size = new_size;
        Ok(())
    }

    /// Empties the temporary file (same file, same lock) and the hash, so the
    /// module can be written again from its first byte (a fetcher moving to
    /// another source). An ingest whose write already failed cannot restart.
    fn restart(&mut self) -> bool {
        use std::io::Seek as _;
        if self.failure.is_some() {
            return false;
        }
        let Some(out) = self.out.take() else {
            return false;
        };
        // The buffered bytes are dropped, not written.
        let mut file = out.file;
        if let Err(e) = file.set_len(0).and_then(|()| file.rewind()) {
            let err = StoreError::io("emptying temporary file", &self.temp, e);
            let _ = self.fail(err);
            return false;
        }
        self.out = Some(Output::new(file));
        self.hasher = StreamHasher::new();
        self.size = 0;
        self.header = [0; 8];
        true
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // Close before unlinking (not required on Unix, tidy everywhere). A
        // failed flush here is irrelevant: the file is going away.
        drop(self.out.take());
        match fs::remove_file(&self.temp) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %self.temp.display(), error = %e, "could not remove temporary file of an abandoned ingest");
            }
        }
    }
}

#[cfg(test)]
mod restart_tests {
    use wasm_cache_core::ModuleSink;

    use crate::FsStore;

    fn sha(bytes: &[u8]) -> wasm_cache_core::Sha256Digest {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(bytes);
        super::finish_digest(ctx)
    }

    #[test]
    fn a_restarted_ingest_holds_only_what_came_after() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = FsStore::open(dir.path()).unwrap();
        let good = wasm_cache_testkit::modules::sample_module(200_000, 1);
        let mut wrong = good.clone();
        wrong[150_000] ^= 1;
        let mut ingest = store.ingest(Some(sha(&good)), 1 << 20).unwrap();
        // Most of a wrong module (past the 64 KiB buffer), then a restart.
        ingest.write(&wrong[..180_000]).unwrap();
        let temp = ingest.temp_path().to_owned();
        assert!(ingest.restart());
        assert_eq!(ingest.size(), 0);
        assert_eq!(std::fs::metadata(&temp).unwrap().len(), 0);
        for c in good.chunks(7_000) {
            ingest.write(c).unwrap();
        }
        let committed = ingest.commit().unwrap();
        assert_eq!(committed.digest, sha(&good));
        assert_eq!(std::fs::read(&committed.path).unwrap(), good);
        // An ingest whose write failed cannot restart.
        let mut small = store.ingest(None, 10).unwrap();
        small.write(&good[..100]).unwrap_err();
        assert!(!small.restart());
    }
}
