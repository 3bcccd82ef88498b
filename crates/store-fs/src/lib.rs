//! # wasm-store-fs
//!
//! The module store of wasm-cache: a directory of Wasm modules named by their
//! sha256 (`<dir>/<hex>.wasm`, the reference's layout), written so that a crash,
//! a full disk or a concurrent delete never leaves a wrong file under a
//! module's name, plus a small crash-safe [`Journal`] the cache uses to keep its
//! own metadata (URLs, last use) across restarts.
//!
//! Why: the reference writes straight to the final path, so a crash mid-write
//! leaves a truncated module that Envoy will be handed later, and it forgets
//! everything on restart. Here a module appears at its final path only complete,
//! checked and durable, and [`FsStore::open`] rebuilds the list of modules from
//! the directory.
//!
//! ```
//! use wasm_cache_core::ModuleSink;
//! use wasm_store_fs::FsStore;
//!
//! let dir = tempfile::tempdir()?;
//! let (store, report) = FsStore::open(dir.path())?;
//! assert_eq!(report.modules, 0);
//!
//! // Stream a module in, chunk by chunk (a fetcher does this through `&mut dyn ModuleSink`).
//! let mut ingest = store.ingest(None, 1024 * 1024)?;
//! ingest.write(b"\0asm\x01\0\0\0")?;
//! ingest.write(b"...sections...")?;
//! let committed = ingest.commit()?;
//! assert_eq!(committed.path, store.path_of(&committed.digest));
//! assert!(store.contains(&committed.digest));
//!
//! // After a restart the module is listed again, unverified until re-hashed once.
//! drop(store);
//! let (store, report) = FsStore::open(dir.path())?;
//! assert_eq!(report.modules, 1);
//! assert!(!store.list()[0].verified);
//! assert!(store.verify(&committed.digest)?);
//! assert!(store.get(&committed.digest).unwrap().verified);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Crash-safety protocol of an ingest
//!
//! 1. [`FsStore::ingest`] creates `.tmp-<random>-<n>.wasm.partial` in the store
//!    directory with `O_CREAT|O_EXCL|O_NOFOLLOW` and holds its `flock` until
//!    it is renamed into place or deleted. Temporary names start with `.` and end in
//!    `.partial`; final names are 64 hex digits plus `.wasm`, so the two patterns
//!    can never match the same name.
//! 2. Each chunk is checked against the size limit (the chunk that crosses it
//!    fails), hashed with SHA-256 and written in writes of 1 MiB (a buffer
//!    of at most that size); every 8 MiB, writeback of what was written is
//!    started (`sync_file_range(SYNC_FILE_RANGE_WRITE)` on Linux), so the
//!    `fsync` of step 3 finds little left to do. Memory does not depend on
//!    the module's size.
//! 3. [`Ingest::commit`] checks the digest against the expected one and the
//!    8-byte Wasm header (`00 61 73 6d 01 00 00 00`, via
//!    [`wasm_cache_core::check_wasm_header`]), flushes and `fsync`s the temporary file.
//! 4. Under the digest's lock: if a *verified* file of the same digest and size
//!    is already in place, it is kept untouched and the temporary file deleted
//!    ([`Committed::already_present`]). Otherwise the temporary file is
//!    `rename`d onto `<hex>.wasm` (atomic: readers see the old file or the new
//!    one, never a partial one), then the directory is `fsync`ed so the new
//!    name is durable.
//! 5. Any failure before the rename, and dropping an [`Ingest`] without
//!    committing, deletes the temporary file. A crash (even `SIGKILL` or power
//!    loss) leaves at most a temporary file, which the next [`FsStore::open`]
//!    (in any process) deletes once its lock is free: a live writer's
//!    temporary file is never deleted, whatever happened to other lock files. A file at a final name was therefore complete and checked when
//!    it got there.
//!
//! Disk full (`ENOSPC`) or permission errors surface as [`StoreError::Io`]
//! naming the operation and the path (`creating temporary file in /x: ...`,
//! `writing temporary file /x/.tmp-...: No space left on device`), with
//! [`StoreError::is_no_space`] / [`StoreError::kind`]; the store is left as it
//! was.
//!
//! ## Recovery and lazy verification
//!
//! [`FsStore::open`] lists the directory: every regular file named
//! `<64 lowercase hex>.wasm` becomes a module with its size and modification
//! time (the cache's fallback for "last use" when its journal has nothing
//! later); temporary files are deleted; other `*.wasm` entries (upper-case or
//! short names, symlinks, directories) are ignored, reported in
//! [`RecoveryReport::ignored`] and never listed.
//!
//! **Decision: verification is lazy.** Open reads no content, so it stays a
//! `readdir` plus one `stat` per file (10,000 modules open in milliseconds).
//! Every recovered module is marked unverified ([`StoredModule::verified`] is
//! `false`); the cache calls [`FsStore::verify`] (a full streaming re-hash plus
//! the header check) once before it first serves a recovered module, and
//! removes it if that fails. Modules ingested by this process are verified by
//! construction. [`FsStore::verify_all`] re-hashes everything, and with
//! `repair` deletes mismatching files. The trade-off: a corrupted file costs one
//! re-hash on first use instead of slowing every start-up by the size of the
//! whole cache.
//!
//! **The verification mark** spares that re-hash when nothing changed. A
//! file this store hashed (at ingest, or by re-hashing it) carries in the
//! extended attribute `user.wasm-cache.verified` its digest and identity:
//! device, inode, size and modification time. [`FsStore::verify`] opens the
//! file (`O_NOFOLLOW`), `fstat`s it, and accepts it without reading a byte
//! when the mark matches that identity and the file is owned by this user;
//! otherwise it re-hashes (and marks a good file again). Any write changes
//! the modification time, so a changed file is re-hashed; only the owner can
//! set a modification time back. A file system without user extended
//! attributes simply re-hashes, as before. `verify_all` ignores marks.
//!
//! ## Hits without a system call
//!
//! [`FsStore::servable`] (the cache's hit path: verified, and the file
//! there?) would cost an `fstatat` per call, about 1 µs on a VM, more than
//! the rest of a cache hit. Instead the store watches its directory with
//! inotify (the `rustix` bindings the crate already uses; a thread started by
//! the first call) and remembers each answer until an event names the file:
//! a deletion or a rename away drops the answer (the next call stats again
//! and finds the file gone); a write, a rename onto the name, a creation or a
//! metadata change also marks the module unverified unless the file carries
//! the verification mark of its current state, so a replaced file is
//! re-hashed before it is served. Lost events (`IN_Q_OVERFLOW`) drop every
//! answer and re-check every verified module; a lost watch (the directory
//! moved, deleted or unmounted) turns the remembering off for good. No
//! watch is used where it cannot be trusted or set up: network and FUSE file
//! systems (other machines' changes raise no event here), inotify limits
//! reached, or after [`FsStore::disable_watch`]; then every call stats, as
//! before. The guarantee is therefore "not handed out once the change is
//! observable": from the moment the watch's thread reads the event
//! (microseconds after the change on an idle machine) rather than from the
//! very next call.
//!
//! ## Concurrency
//!
//! [`FsStore`] is `Send + Sync` and cheap to clone. Operations that change a
//! final name ([`Ingest::commit`]'s install step, [`FsStore::remove`],
//! [`FsStore::verify`]'s update, `verify_all`'s repair) take a lock chosen by
//! the digest (64 stripes); writing and hashing a module happen outside it.
//!
//! Invariant: whenever no lock is held, the index has an entry for a digest if
//! and only if `<hex>.wasm` exists (unless someone else touches the directory),
//! and a file written by this store holds bytes hashing to its name. A remove
//! racing an ingest of the same digest is serialised with the ingest's
//! exists-check-and-rename: either the remove runs first (and the ingest then
//! installs the file), or the ingest installs first (and the remove then
//! deletes it). There is no third outcome such as an index entry without a
//! file or a file deleted between the check and the rename.
//!
//! That lock is the only one that orders publishing against deleting, for
//! the store and for whoever keeps references to its modules (the cache's
//! index): [`Ingest::commit_then`] runs the caller's "record the reference"
//! under it right after the install, [`FsStore::remove_if`] runs the caller's
//! "is it still unreferenced?" under it right before the unlink, and
//! [`FsStore::verify_then`] / [`FsStore::verify_all_then`] do the same around
//! a re-hash. Those callbacks must stay short and must not call back into the
//! store for the same digest. The store also keeps the one record of which
//! modules this process has re-hashed ([`StoredModule::verified`]).
//!
//! Across processes, the final rename is atomic and content-addressed (two
//! processes installing one digest install the same bytes). A second
//! [`FsStore::open`] of one directory in one process (same device and inode)
//! shares the first store's state. [`FsStore::lock_key`] is the cross-process
//! lock of one in-flight download (`<dir>/.locks/<sha256 of key>.lock`), with
//! a deadline; no lock covers the whole directory.
//!
//! ## Journal format
//!
//! [`Journal<T>`] stores records of any `T: Serialize + DeserializeOwned`, one
//! per line: `<crc32 of the JSON as 8 lowercase hex> <compact JSON>\n`.
//! Several processes may share one: appends hold `<journal>.lock` shared and
//! write whole lines with one `write` on an `O_APPEND` descriptor (after
//! `#\n` if a torn line ends the file); [`JournalLock::compact`] holds it
//! exclusively and replaces the file atomically (`<journal>.compact-tmp`,
//! created `O_EXCL|O_NOFOLLOW`, `fsync`, rename, directory `fsync`);
//! [`Journal::read_new`] returns what anyone appended since the last read.
//! Replay skips lines whose checksum or JSON is wrong and ignores a final
//! line without newline (a torn append). No journal, lock or temporary file
//! is ever opened through a symlink. A journal may live inside the store
//! directory: names not ending in `.wasm` are ignored by recovery.

mod error;
mod hasher;
mod hints;
mod ingest;
mod journal;
mod locks;
mod mark;
mod names;
mod store;
mod watch;
mod writeback;

pub use crate::error::{StoreError, StoreErrorKind};
pub use crate::hints::{HintDir, check_module};
pub use crate::ingest::{Committed, Ingest};
pub use crate::journal::{JOURNAL_LOCK_WAIT, Journal, JournalLock, Replay};
pub use crate::locks::FileLock;
pub use crate::store::{
    Files, FsStore, IgnoredFile, KEY_LOCK_DIR, Mismatch, RecoveryReport, StoredModule, VerifyReport,
};
pub use crate::watch::Servable;
/// The core types this crate's API uses (`Ingest` is a [`ModuleSink`]), so
/// that using the store alone needs no direct dependency on `wasm-cache-core`.
pub use wasm_cache_core::{ModuleSink, Sha256Digest, check_wasm_header};
