//! The verification mark: what lets another process trust a module file
//! this store hashed without hashing it again.
//!
//! When the store has checked that a file's content hashes to its name (at
//! ingest, or by re-hashing it), it records on the file itself, in the
//! extended attribute `user.wasm-cache.verified`, the digest and the file's
//! identity: device, inode, size and modification time. A process that
//! recovers the file later compares that record with a fresh `fstat` of the
//! open file: if everything matches and the file is owned by this user,
//! the content is what was hashed and the file is served without reading
//! it. Any write changes the modification time (and usually the size), so
//! a changed file is re-hashed; only the file's owner (this user, or root)
//! can set a modification time back, and a file owned by anyone else is
//! never trusted by its mark. A copy, a rename onto another digest or a
//! restored backup changes the inode or the digest and is re-hashed too.
//!
//! Best effort both ways: a file system without user extended attributes
//! (or a failed write of the mark) costs a re-hash, as before; `verify`
//! ([`crate::FsStore::verify_all`]) ignores marks and re-hashes everything.

use std::fs::File;

use rustix::fs::{Stat, XattrFlags, fgetxattr, fsetxattr};
use wasm_cache_core::Sha256Digest;

/// The extended attribute holding the mark.
pub(crate) const XATTR: &str = "user.wasm-cache.verified";

/// The mark of `digest` for a file in state `st`.
fn record(digest: &Sha256Digest, st: &Stat) -> String {
    format!(
        "v1 {} dev={} ino={} size={} mtime={}.{:09}",
        digest.to_hex(),
        st.st_dev,
        st.st_ino,
        st.st_size,
        st.st_mtime,
        st.st_mtime_nsec
    )
}

/// Records on `file` (in state `st`, after its last write) that its content
/// hashes to `digest`. Best effort: failures are logged at debug level.
pub(crate) fn set(file: &File, digest: &Sha256Digest, st: &Stat) {
    if let Err(e) = fsetxattr(
        file,
        XATTR,
        record(digest, st).as_bytes(),
        XattrFlags::empty(),
    ) {
        tracing::debug!(error = %e, "could not record the verification mark; the next process re-hashes the module");
    }
}

/// Removes the mark from `file` (found not to hash to its name). Best
/// effort: a file without a mark is the usual case.
pub(crate) fn clear(file: &File) {
    match rustix::fs::fremovexattr(file, XATTR) {
        Ok(()) => {}
        Err(e) if e == rustix::io::Errno::NODATA => {}
        Err(e) => tracing::debug!(error = %e, "could not remove a verification mark"),
    }
}

/// Whether `file`, in state `st` (a fresh `fstat` of it), carries the mark of
/// `digest` for exactly this state and is owned by this user.
pub(crate) fn is_set(file: &File, digest: &Sha256Digest, st: &Stat) -> bool {
    if st.st_uid != rustix::process::geteuid().as_raw() {
        return false;
    }
    let want = record(digest, st);
    let mut buf = [0u8; 256];
    match fgetxattr(file, XATTR, &mut buf[..]) {
        Ok(n) => buf.get(..n) == Some(want.as_bytes()),
        Err(_) => false,
    }
}

/// Whether two `fstat`s of one file show the same identity (nothing wrote
/// to it in between).
pub(crate) fn same_identity(a: &Stat, b: &Stat) -> bool {
    (a.st_dev, a.st_ino, a.st_size, a.st_mtime, a.st_mtime_nsec)
        == (b.st_dev, b.st_ino, b.st_size, b.st_mtime, b.st_mtime_nsec)
}
