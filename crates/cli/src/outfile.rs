//! `fetch -o PATH`: a copy of the cached module at a path of the caller's
//! choosing, appearing complete or not at all.
//!
//! The copy goes to a new temporary file beside `PATH` (created with
//! `O_CREAT | O_EXCL | O_NOFOLLOW`, so never through a symlink someone planted
//! there), is synced, then renamed over `PATH` (a rename replaces a symlink at
//! `PATH` rather than writing through it). On file systems that share extents
//! (btrfs, XFS) the copy is a reflink (`FICLONE`); elsewhere `copy_file_range`.
//!
//! Not a hard link: the cached module and the caller's file would be one
//! inode, so a later in-place write to `PATH` would change the cached module
//! under every other user of the cache, and its permissions and owner would
//! be the cache's.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Copies `src` (a module in the cache) to `dest` atomically.
pub(crate) fn place(src: &Path, dest: &Path) -> Result<(), String> {
    let shown = dest.display();
    let name = dest
        .file_name()
        .ok_or_else(|| format!("output path {shown} names no file"))?;
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if std::fs::symlink_metadata(dest).is_ok_and(|m| m.is_dir()) {
        return Err(format!("output path {shown} is a directory"));
    }
    let mut source = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(src)
        .map_err(|e| format!("opening cached module {}: {e}", src.display()))?;
    let (tmp, mut out) = create_temp(&parent, &name.to_string_lossy())
        .map_err(|e| format!("creating a temporary file in {}: {e}", parent.display()))?;
    let tmp = Temp(Some(tmp));
    let written = copy(&mut source, &mut out)
        .and_then(|()| out.sync_all())
        .map_err(|e| format!("writing {}: {e}", tmp.path().display()));
    drop(out);
    written?;
    std::fs::rename(tmp.path(), dest).map_err(|e| format!("renaming into {shown}: {e}"))?;
    tmp.keep();
    // The new name is durable once the directory is synced; failing that,
    // the file is still complete.
    if let Ok(d) = File::open(&parent) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// `-o -`: the cached module's bytes on stdout. A reader that goes away ends
/// the command with status 0, like every other output.
pub(crate) fn to_stdout(src: &Path) -> Result<(), String> {
    let mut source = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(src)
        .map_err(|e| format!("opening cached module {}: {e}", src.display()))?;
    let mut out = io::stdout().lock();
    match io::copy(&mut source, &mut out).and_then(|_| io::Write::flush(&mut out)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => Err(format!("writing the module to stdout: {e}")),
    }
}

fn create_temp(dir: &Path, name: &str) -> io::Result<(PathBuf, File)> {
    let pid = std::process::id();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mut last = None;
    for attempt in 0..32u32 {
        let path = dir.join(format!(
            ".{name}.{pid}.{:x}.wasm-cache-tmp",
            nanos.wrapping_add(attempt.wrapping_mul(0x9e37_79b9))
        ));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
        {
            Ok(f) => return Ok((path, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no free temporary name")))
}

fn copy(source: &mut File, out: &mut File) -> io::Result<()> {
    if rustix::fs::ioctl_ficlone(&*out, &*source).is_ok() {
        return Ok(());
    }
    io::copy(source, out).map(|_| ())
}

/// Removes the temporary file unless kept.
struct Temp(Option<PathBuf>);

impl Temp {
    fn path(&self) -> &Path {
        self.0.as_deref().unwrap_or(Path::new(""))
    }
    fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_a_symlink_at_the_destination_instead_of_writing_through_it() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("m.wasm");
        std::fs::write(&src, b"\0asm\x01\0\0\0module").unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"keep me").unwrap();
        let dest = dir.path().join("out.wasm");
        std::os::unix::fs::symlink(&victim, &dest).unwrap();
        place(&src, &dest).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep me");
        assert!(!std::fs::symlink_metadata(&dest).unwrap().is_symlink());
        assert_eq!(std::fs::read(&dest).unwrap(), b"\0asm\x01\0\0\0module");
        // No temporary file left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
    }

    #[test]
    fn a_directory_or_a_missing_parent_is_an_error_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("m.wasm");
        std::fs::write(&src, b"\0asm\x01\0\0\0").unwrap();
        let e = place(&src, dir.path()).unwrap_err();
        assert!(e.contains("is a directory"), "{e}");
        let e = place(&src, &dir.path().join("nope/out.wasm")).unwrap_err();
        assert!(e.contains("creating a temporary file"), "{e}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
