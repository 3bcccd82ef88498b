//! Early writeback of a file being written: `sync_file_range` on Linux.
//!
//! A module is `fsync`ed before it is renamed into place. Left alone, the
//! kernel starts writing a new file back only when its dirty pages age or
//! pile up, so that `fsync` waits for nearly the whole module (about 20 ms
//! for 64 MiB on the benchmark machine). Asking for writeback of each 8 MiB
//! as soon as it is written overlaps the disk with the download, and the
//! `fsync` finds only the tail left. This changes when bytes reach the disk,
//! never whether the commit waits for them: the `fsync` stays.

use std::fs::File;

/// Starts writeback of `len` bytes at `offset` without waiting for it
/// (`SYNC_FILE_RANGE_WRITE`). Best effort: an error (a file system without
/// support) is ignored, since the `fsync` of the commit writes and checks
/// everything anyway.
#[cfg(target_os = "linux")]
#[allow(
    unsafe_code,
    reason = "sync_file_range has no safe wrapper in std or rustix; the call only reads its integer arguments"
)]
pub(crate) fn start(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd as _;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: the descriptor is open for the duration of the call (borrowed
    // from `file`); no memory is passed to the kernel.
    let r = unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE)
    };
    if r != 0 {
        tracing::trace!(error = %std::io::Error::last_os_error(), "sync_file_range failed; the fsync will do it all");
    }
}

/// Elsewhere: nothing (the `fsync` of the commit does all the work).
#[cfg(not(target_os = "linux"))]
pub(crate) fn start(_file: &File, _offset: u64, _len: u64) {}
