use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use proptest::prelude::*;
use wasm_cache_core::{ModuleSink, Sha256Digest};

use super::*;
use crate::{Ingest, StoreErrorKind};
use std::os::unix::process::CommandExt as _;

/// A valid Wasm header followed by `size - 8` deterministic bytes.
fn module(size: usize, seed: u64) -> Vec<u8> {
    wasm_cache_testkit::modules::sample_module(size, seed)
}

fn sha(bytes: &[u8]) -> Sha256Digest {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(bytes);
    crate::ingest::finish_digest(ctx)
}

fn temp_files(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(".tmp-")
        })
        .collect()
}

fn feed(ingest: &mut Ingest, bytes: &[u8], chunk: usize) {
    for c in bytes.chunks(chunk.max(1)) {
        ingest.write(c).unwrap();
    }
}

/// What a crash of the writing process leaves: its temporary file, as far
/// as it got, with nobody holding its lock. (Leaking the ingest would keep
/// the lock held by this live process, which recovery rightly respects.)
fn crash(ingest: Ingest) {
    let temp = ingest.temp_path().to_owned();
    let copy = temp.with_extension("crash-copy");
    fs::copy(&temp, &copy).unwrap();
    drop(ingest);
    fs::rename(&copy, &temp).unwrap();
}

fn put(store: &FsStore, bytes: &[u8]) -> Committed {
    let mut ing = store.ingest(None, u64::MAX).unwrap();
    feed(&mut ing, bytes, 1000);
    ing.commit().unwrap()
}

#[test]
fn store_and_ingest_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<FsStore>();
    send::<Ingest>();
    send_sync::<crate::Journal<std::rc::Rc<u8>>>();
}

#[test]
fn ingest_commit_list_remove() {
    let dir = tempfile::tempdir().unwrap();
    let (store, report) = FsStore::open(dir.path()).unwrap();
    assert_eq!(report, RecoveryReport::default());
    let m = module(200_000, 1);
    let mut ing = store.ingest(Some(sha(&m)), m.len() as u64).unwrap();
    assert!(ing.temp_path().starts_with(store.dir()));
    feed(&mut ing, &m, 7777);
    assert_eq!(ing.size(), m.len() as u64);
    let c = ing.commit().unwrap();
    assert_eq!(c.digest, sha(&m));
    assert_eq!(c.size, m.len() as u64);
    assert!(!c.already_present);
    assert_eq!(c.path, dir.path().join(format!("{}.wasm", sha(&m))));
    assert_eq!(fs::read(&c.path).unwrap(), m);
    assert!(store.contains(&c.digest));
    let listed = store.list();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].verified);
    assert_eq!(listed[0].size, m.len() as u64);
    assert!(temp_files(dir.path()).is_empty());

    assert!(store.remove(&c.digest).unwrap());
    assert!(!store.remove(&c.digest).unwrap());
    assert!(!c.path.exists());
    assert!(!store.contains(&c.digest));
    assert!(store.list().is_empty());
}

#[test]
fn wrong_expected_digest_is_an_error_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = FsStore::open(dir.path()).unwrap();
    let m = module(5000, 2);
    let wanted = sha(b"something else");
    let mut ing = store.ingest(Some(wanted), 1 << 20).unwrap();
    feed(&mut ing, &m, 512);
    let err = ing.commit().unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Integrity);
    assert!(err.is_integrity());
    match &err {
        StoreError::DigestMismatch { expected, actual } => {
            assert_eq!(*expected, wanted);
            assert_eq!(*actual, sha(&m));
        }
        other => panic!("unexpected error {other}"),
    }
    assert_eq!(
        err.to_string(),
        format!(
            "module has checksum {}, which does not match: {wanted}",
            sha(&m)
        )
    );
    assert!(!store.path_of(&wanted).exists());
    assert!(!store.path_of(&sha(&m)).exists());
    assert!(temp_files(dir.path()).is_empty());
    assert!(store.list().is_empty());
}

#[test]
fn non_wasm_and_wrong_version_and_short_are_invalid() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = FsStore::open(dir.path()).unwrap();
    let cases: [(&[u8], &str); 4] = [
        (b"\x7fELF\x02\x01\x01\0 not wasm at all", "bad magic"),
        (b"\0asm\x02\0\0\0 a future version", "version"),
        (b"\0asm", "shorter"),
        (b"", "shorter"),
    ];
    for (bytes, want) in cases {
        let mut ing = store.ingest(Some(sha(bytes)), 1 << 20).unwrap();
        // One byte at a time: the header may arrive split across chunks.
        feed(&mut ing, bytes, 1);
        let err = ing.commit().unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::InvalidModule, "{err}");
        assert!(
            err.to_string().starts_with("invalid Wasm module: "),
            "{err}"
        );
        assert!(err.to_string().contains(want), "{err}");
        assert!(!store.path_of(&sha(bytes)).exists());
    }
    assert!(temp_files(dir.path()).is_empty());
    assert!(store.list().is_empty());
}

#[test]
fn size_limit_fails_on_the_crossing_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = FsStore::open(dir.path()).unwrap();
    let m = module(3000, 3);

    // Exactly at the limit is fine.
    let mut ing = store.ingest(None, 3000).unwrap();
    feed(&mut ing, &m, 1000);
    ing.commit().unwrap();

    let mut ing = store.ingest(None, 2999).unwrap();
    ing.write(&m[..1000]).unwrap();
    ing.write(&m[1000..2000]).unwrap();
    let io_err = ing.write(&m[2000..]).unwrap_err();
    assert_eq!(io_err.kind(), std::io::ErrorKind::FileTooLarge);
    assert!(matches!(
        StoreError::from_io(&io_err),
        Some(StoreError::TooLarge { limit: 2999 })
    ));
    assert!(matches!(ing.error(), Some(StoreError::TooLarge { .. })));
    // Every later write fails too, even a small one.
    assert!(ing.write(b"x").is_err());
    let err = ing.commit().unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::TooLarge);
    assert_eq!(
        err.to_string(),
        "module exceeds the size limit of 2999 bytes"
    );
    assert!(temp_files(dir.path()).is_empty());
    assert_eq!(store.list().len(), 1);
}

#[test]
fn identical_file_is_not_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = FsStore::open(dir.path()).unwrap();
    let m = module(10_000, 4);
    let first = put(&store, &m);
    let before = fs::metadata(&first.path).unwrap();
    let second = put(&store, &m);
    assert!(second.already_present);
    assert_eq!(second.path, first.path);
    let after = fs::metadata(&first.path).unwrap();
    assert_eq!(before.ino(), after.ino());
    assert_eq!(before.modified().unwrap(), after.modified().unwrap());
    assert_eq!(before.ctime_nsec(), after.ctime_nsec());
    assert!(temp_files(dir.path()).is_empty());
}

#[test]
fn ingest_replaces_an_unverified_corrupt_file() {
    let dir = tempfile::tempdir().unwrap();
    let m = module(4096, 5);
    let d = sha(&m);
    // A truncated file at the final name, as a crashed reference writer leaves.
    fs::write(dir.path().join(d.file_name()), &m[..100]).unwrap();
    let (store, report) = FsStore::open(dir.path()).unwrap();
    assert_eq!(report.modules, 1);
    assert!(!store.get(&d).unwrap().verified);
    let c = put(&store, &m);
    assert!(!c.already_present, "an unverified file must not be trusted");
    assert_eq!(fs::read(&c.path).unwrap(), m);
    assert!(store.get(&d).unwrap().verified);
}

#[test]
fn recovery_lists_removes_temps_ignores_bad_names() {
    let dir = tempfile::tempdir().unwrap();
    let good = module(1000, 6);
    let corrupt = module(1000, 7);
    let d_good = sha(&good);
    let d_corrupt = sha(&corrupt);
    {
        let (store, _) = FsStore::open(dir.path()).unwrap();
        put(&store, &good);
        put(&store, &corrupt);
        // Leave a temporary file behind, as a crash would.
        let mut ing = store.ingest(None, u64::MAX).unwrap();
        ing.write(&good[..10]).unwrap();
        crash(ing);
    }
    // Corrupt one module behind the store's back.
    let mut bytes = corrupt.clone();
    bytes[500] ^= 0xff;
    fs::write(dir.path().join(d_corrupt.file_name()), &bytes).unwrap();
    // Things that look like modules but must never be served.
    let upper = format!("{}.wasm", d_good.to_hex().to_uppercase());
    fs::write(dir.path().join(&upper), &good).unwrap();
    fs::write(dir.path().join("short.wasm"), &good).unwrap();
    let other = sha(b"symlinked");
    std::os::unix::fs::symlink(
        dir.path().join(d_good.file_name()),
        dir.path().join(other.file_name()),
    )
    .unwrap();
    fs::create_dir(dir.path().join(sha(b"a dir").file_name())).unwrap();
    // Not ours: left alone and not reported.
    fs::write(dir.path().join("index.journal"), b"keep me").unwrap();
    assert_eq!(temp_files(dir.path()).len(), 1);

    let (store, report) = FsStore::open(dir.path()).unwrap();
    assert_eq!(report.modules, 2);
    assert_eq!(report.bytes, 2000);
    assert_eq!(report.removed_temp_files.len(), 1);
    assert!(temp_files(dir.path()).is_empty());
    let mut ignored: Vec<String> = report
        .ignored
        .iter()
        .map(|i| i.path.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    ignored.sort();
    let mut want = vec![
        upper,
        "short.wasm".to_owned(),
        other.file_name(),
        sha(b"a dir").file_name(),
    ];
    want.sort();
    assert_eq!(ignored, want);
    assert!(dir.path().join("index.journal").exists());

    let listed = store.list();
    assert_eq!(listed.iter().map(|m| m.digest).collect::<Vec<_>>(), {
        let mut v = vec![d_good, d_corrupt];
        v.sort();
        v
    });
    assert!(listed.iter().all(|m| !m.verified));
    assert!(store.get(&other).is_none(), "a symlink is never a module");
    assert!(!store.contains(&other));
    assert!(!store.verify(&other).unwrap());
    assert!(store.get(&other).is_none());
    assert!(
        !format!("{store:?}").contains(&d_good.to_hex()),
        "Debug lists no modules"
    );

    assert!(store.verify(&d_good).unwrap());
    assert!(store.get(&d_good).unwrap().verified);
    assert!(!store.verify(&d_corrupt).unwrap());
    assert!(!store.get(&d_corrupt).unwrap().verified);

    let report = store.verify_all(false).unwrap();
    assert_eq!(report.ok, vec![d_good]);
    assert_eq!(report.mismatched.len(), 1);
    assert_eq!(report.mismatched[0].digest, d_corrupt);
    assert!(
        report.mismatched[0]
            .reason
            .starts_with("content hashes to ")
    );
    assert!(report.removed.is_empty());
    assert!(store.path_of(&d_corrupt).exists());

    let report = store.verify_all(true).unwrap();
    assert_eq!(report.removed, vec![d_corrupt]);
    assert!(!store.path_of(&d_corrupt).exists());
    assert_eq!(store.list().len(), 1);
}

#[test]
fn verify_of_a_missing_file_is_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = FsStore::open(dir.path()).unwrap();
    let c = put(&store, &module(100, 8));
    fs::remove_file(&c.path).unwrap();
    assert!(!store.contains(&c.digest));
    let err = store.verify(&c.digest).unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::NotFound);
    assert!(err.to_string().contains(&c.path.display().to_string()));
    assert!(store.get(&c.digest).is_none());
    assert_eq!(store.verify_all(false).unwrap(), VerifyReport::default());
}

#[test]
fn a_file_named_right_but_not_wasm_fails_verification() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = b"not wasm, but named by its own hash";
    fs::write(dir.path().join(sha(bytes).file_name()), bytes).unwrap();
    let (store, _) = FsStore::open(dir.path()).unwrap();
    assert!(!store.verify(&sha(bytes)).unwrap());
    let report = store.verify_all(false).unwrap();
    assert!(report.mismatched[0].reason.starts_with("not a Wasm module"));
}

#[test]
fn drop_and_abort_delete_the_temporary_file() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = FsStore::open(dir.path()).unwrap();
    let mut a = store.ingest(None, u64::MAX).unwrap();
    a.write(b"\0asm").unwrap();
    let mut b = store.ingest(None, u64::MAX).unwrap();
    b.write(b"\0asm").unwrap();
    assert_eq!(temp_files(dir.path()).len(), 2);
    a.abort();
    drop(b);
    assert!(temp_files(dir.path()).is_empty());
    assert!(store.list().is_empty());
}

/// Disk full: the ingest's descriptor is swapped for `/dev/full`, whose writes
/// fail with a real ENOSPC from the kernel. There is no safe way to fill a real
/// disk in a test, and a tmpfs needs `mount` privileges a test cannot assume.
#[test]
fn enospc_is_a_clear_error_and_keeps_previous_state() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = FsStore::open(dir.path()).unwrap();
    let kept = put(&store, &module(1000, 9));
    let mut ing = store.ingest(None, u64::MAX).unwrap();
    let temp = ing.temp_path().to_path_buf();
    ing.replace_output_for_test(
        fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap(),
    );
    // Larger than the 1 MiB write buffer, so the write reaches the "disk" at once.
    let io_err = ing.write(&module(2 << 20, 10)).unwrap_err();
    assert_eq!(io_err.kind(), std::io::ErrorKind::StorageFull);
    assert!(
        io_err.to_string().starts_with(&format!(
            "writing temporary file {}: No space left on device",
            temp.display()
        )),
        "{io_err}"
    );
    assert!(StoreError::from_io(&io_err).is_some_and(StoreError::is_no_space));
    // Later writes fail too, naming the first failure.
    let again = ing.write(b"more").unwrap_err();
    assert!(again.to_string().contains("already failed"), "{again}");
    let err = ing.commit().unwrap_err();
    assert!(err.is_no_space(), "{err}");
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("writing temporary file {}: ", temp.display())),
        "{msg}"
    );
    assert!(msg.contains("No space left on device"), "{msg}");
    assert!(temp_files(dir.path()).is_empty());
    assert_eq!(store.list().len(), 1);
    assert_eq!(fs::read(&kept.path).unwrap(), module(1000, 9));
}

/// Permission errors. Tests usually run as root here, and root ignores
/// `chmod 0o555`; so the read-only-directory case is checked only when the mode
/// really denies writes, and the path-based failure is always checked with a
/// parent that is a regular file (ENOTDIR), which even root cannot get past.
#[test]
fn permission_and_not_a_directory_errors_name_path_and_operation() {
    let dir = tempfile::tempdir().unwrap();

    // Opening below a regular file.
    let plain = dir.path().join("plain-file");
    fs::write(&plain, b"x").unwrap();
    let err = FsStore::open(plain.join("store")).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!(
            "creating store directory {}: ",
            plain.join("store").display()
        )),
        "{msg}"
    );
    assert_eq!(err.kind(), StoreErrorKind::Denied, "{msg}");

    // The directory replaced by a file after opening.
    let store_dir = dir.path().join("store");
    let (store, _) = FsStore::open(&store_dir).unwrap();
    fs::remove_dir(&store_dir).unwrap();
    fs::write(&store_dir, b"not a directory").unwrap();
    let err = store.ingest(None, 100).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!(
            "creating temporary file in {}: ",
            store_dir.display()
        )),
        "{msg}"
    );
    assert!(msg.contains("Not a directory"), "{msg}");
    fs::remove_file(&store_dir).unwrap();

    // A read-only directory, where the mode is enforced.
    let ro = dir.path().join("ro");
    let (store, _) = FsStore::open(&ro).unwrap();
    let kept = put(&store, &module(500, 11));
    fs::set_permissions(&ro, fs::Permissions::from_mode(0o555)).unwrap();
    let enforced = fs::write(ro.join("probe"), b"").is_err();
    if enforced {
        let err = store.ingest(None, 100).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!("creating temporary file in {}: ", ro.display())),
            "{msg}"
        );
        assert_eq!(err.kind(), StoreErrorKind::Denied);
        let err = store.remove(&kept.digest).unwrap_err();
        assert!(
            err.to_string().starts_with("removing module file "),
            "{err}"
        );
        assert!(kept.path.exists());
        assert!(store.get(&kept.digest).is_some());
    }
    fs::set_permissions(&ro, fs::Permissions::from_mode(0o755)).unwrap();
}

/// Remove racing ingest of the same digest: after everything settles, the index
/// and the directory agree, every file is intact, and no temporary file is left.
#[test]
fn concurrent_remove_and_ingest_of_one_digest() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = FsStore::open(dir.path()).unwrap();
    let m = Arc::new(module(64 * 1024, 12));
    let d = sha(&m);
    let mut threads = Vec::new();
    for t in 0..4 {
        let store = store.clone();
        let m = Arc::clone(&m);
        threads.push(std::thread::spawn(move || {
            for i in 0..40 {
                if t % 2 == 0 {
                    let mut ing = store.ingest(Some(sha(&m)), u64::MAX).unwrap();
                    feed(&mut ing, &m, 4096 + i);
                    let c = ing.commit().unwrap();
                    assert_eq!(c.digest, sha(&m));
                } else {
                    store.remove(&sha(&m)).unwrap();
                    if let Ok(bytes) = fs::read(store.path_of(&sha(&m))) {
                        // Whatever is at the final name is complete.
                        assert_eq!(bytes.as_slice(), m.as_slice());
                    }
                }
            }
        }));
    }
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(store.get(&d).is_some(), store.path_of(&d).exists());
    if store.path_of(&d).exists() {
        assert_eq!(fs::read(store.path_of(&d)).unwrap(), *m);
    }
    assert!(temp_files(dir.path()).is_empty());
    // A last ingest after the dust settles always leaves the module in place.
    let c = put(&store, &m);
    assert!(c.path.exists());
    assert!(store.verify(&d).unwrap());
}

/// The store's lock of a content is the one lock that orders publishing
/// against deleting (issue 14): a holder that records its reference in
/// `commit_then` never sees the file deleted by a `remove_if` that deletes
/// only unreferenced content, however the threads interleave.
#[test]
fn commit_then_and_remove_if_never_delete_a_referenced_module() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = FsStore::open(dir.path()).unwrap();
    let m = Arc::new(module(64 * 1024, 13));
    let d = sha(&m);
    // A stand-in for the cache's index: how many holders refer to the content.
    let refs = Arc::new(AtomicUsize::new(0));
    let mut threads = Vec::new();
    for t in 0..4 {
        let (store, m, refs) = (store.clone(), Arc::clone(&m), Arc::clone(&refs));
        threads.push(std::thread::spawn(move || {
            for i in 0..40 {
                if t % 2 == 0 {
                    let mut ing = store.ingest(Some(d), u64::MAX).unwrap();
                    feed(&mut ing, &m, 4096 + i);
                    let (c, ()) = ing
                        .commit_then(|_| {
                            refs.fetch_add(1, Ordering::SeqCst);
                        })
                        .unwrap();
                    // Referenced: no remover may have deleted it.
                    assert_eq!(fs::read(&c.path).unwrap().as_slice(), m.as_slice());
                    refs.fetch_sub(1, Ordering::SeqCst);
                } else {
                    let _ = store
                        .remove_if(&d, || refs.load(Ordering::SeqCst) == 0)
                        .unwrap();
                }
            }
        }));
    }
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(store.get(&d).is_some(), store.path_of(&d).exists());
    assert!(temp_files(dir.path()).is_empty());
}

#[test]
fn remove_if_verify_then_and_verify_all_then_report_what_they_did() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = FsStore::open(dir.path()).unwrap();
    let m = module(4096, 14);
    let c = put(&store, &m);
    assert_eq!(store.remove_if(&c.digest, || false).unwrap(), None);
    assert!(c.path.exists(), "kept when the caller says no");
    assert_eq!(store.verify_then(&c.digest, |ok| ok).unwrap(), (true, true));
    assert!(store.get(&c.digest).unwrap().verified);
    // Changed behind the store's back: the verdict reaches the callback and
    // the store's record says unverified.
    let mut bad = m.clone();
    bad[100] ^= 0xff;
    fs::set_permissions(&c.path, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(&c.path, &bad).unwrap();
    assert_eq!(
        store.verify_then(&c.digest, |ok| ok).unwrap(),
        (false, false)
    );
    assert!(!store.get(&c.digest).unwrap().verified);
    let mut seen = Vec::new();
    let report = store
        .verify_all_then(false, &mut |d| seen.push(*d))
        .unwrap();
    assert_eq!(report.mismatched.len(), 1);
    assert!(seen.is_empty(), "nothing removed without repair");
    let report = store.verify_all_then(true, &mut |d| seen.push(*d)).unwrap();
    assert_eq!(report.removed, vec![c.digest]);
    assert_eq!(seen, vec![c.digest], "told just before the removal");
    assert!(!c.path.exists());
    assert_eq!(store.remove_if(&c.digest, || true).unwrap(), Some(false));
    let c = put(&store, &m);
    assert_eq!(store.remove_if(&c.digest, || true).unwrap(), Some(true));
    assert!(!c.path.exists() && store.get(&c.digest).is_none());
}

/// Open must not read module content: 10,000 modules open with one readdir and
/// one stat each. The time is printed, not asserted (timing assertions are
/// flaky on a shared machine).
#[test]
fn open_ten_thousand_modules() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..10_000u32 {
        let d = Sha256Digest::from_bytes({
            let mut b = [0u8; 32];
            b[..4].copy_from_slice(&i.to_le_bytes());
            b
        });
        fs::write(dir.path().join(d.file_name()), b"\0asm\x01\0\0\0").unwrap();
    }
    let start = Instant::now();
    let (store, report) = FsStore::open(dir.path()).unwrap();
    let elapsed = start.elapsed();
    println!("opened 10000 modules in {elapsed:?}");
    assert_eq!(report.modules, 10_000);
    assert_eq!(store.list().len(), 10_000);
    assert!(report.ignored.is_empty());
}

// ---------------------------------------------------------------------------
// Model-based property test.

#[derive(Debug, Clone)]
enum Expect {
    None,
    Right,
    Wrong,
}

#[derive(Debug, Clone)]
enum Op {
    /// Start an ingest of pool[content] into a new slot.
    Start {
        content: usize,
        expect: Expect,
        tight_limit: bool,
    },
    /// Write the next chunk of `bytes` bytes to an open slot.
    Write {
        slot: usize,
        bytes: usize,
    },
    /// Write the rest and commit.
    Commit {
        slot: usize,
    },
    Abort {
        slot: usize,
    },
    /// Drop without commit or abort.
    Drop {
        slot: usize,
    },
    Remove {
        content: usize,
    },
    /// Reopen the store; with `crash`, open ingests are leaked (as a killed
    /// process leaves them) instead of dropped.
    Reopen {
        crash: bool,
    },
}

fn pool() -> Vec<Vec<u8>> {
    vec![
        module(8, 1),
        module(100, 2),
        module(3000, 3),
        module(70_000, 4),
        b"\x7fELF not a module".to_vec(),
        b"\0asm\x02\0\0\0 wrong version".to_vec(),
    ]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let expect = prop_oneof![Just(Expect::None), Just(Expect::Right), Just(Expect::Wrong)];
    prop_oneof![
        5 => (0..6usize, expect, proptest::bool::weighted(0.15)).prop_map(|(content, expect, tight_limit)| Op::Start { content, expect, tight_limit }),
        3 => (0..4usize, 1..40_000usize).prop_map(|(slot, bytes)| Op::Write { slot, bytes }),
        5 => (0..3usize).prop_map(|slot| Op::Commit { slot }),
        1 => (0..4usize).prop_map(|slot| Op::Abort { slot }),
        1 => (0..4usize).prop_map(|slot| Op::Drop { slot }),
        2 => (0..5usize).prop_map(|content| Op::Remove { content }),
        1 => proptest::bool::ANY.prop_map(|crash| Op::Reopen { crash }),
    ]
}

struct Open {
    ingest: Ingest,
    content: usize,
    written: usize,
    expect: Expect,
    limit: u64,
    failed: bool,
}

fn check_against_model(store: &FsStore, model: &BTreeMap<Sha256Digest, Vec<u8>>) {
    let listed: Vec<(Sha256Digest, u64)> =
        store.list().iter().map(|m| (m.digest, m.size)).collect();
    let want: Vec<(Sha256Digest, u64)> = model.iter().map(|(d, b)| (*d, b.len() as u64)).collect();
    assert_eq!(listed, want);
    let mut on_disk: Vec<String> = fs::read_dir(store.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".wasm"))
        .collect();
    on_disk.sort();
    let want_names: Vec<String> = model.keys().map(|d| d.file_name()).collect();
    assert_eq!(on_disk, want_names);
    for (d, bytes) in model {
        assert_eq!(&fs::read(store.path_of(d)).unwrap(), bytes);
    }
}

fn run_model(ops: Vec<Op>) {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool();
    let (mut store, _) = FsStore::open(dir.path()).unwrap();
    let mut model: BTreeMap<Sha256Digest, Vec<u8>> = BTreeMap::new();
    let mut slots: Vec<Open> = Vec::new();
    for op in ops {
        match op {
            Op::Start {
                content,
                expect,
                tight_limit,
            } => {
                let bytes = &pool[content];
                let limit = if tight_limit {
                    bytes.len() as u64 / 2
                } else {
                    1 << 20
                };
                let expected = match expect {
                    Expect::None => None,
                    Expect::Right => Some(sha(bytes)),
                    Expect::Wrong => Some(sha(b"wrong")),
                };
                let ingest = store.ingest(expected, limit).unwrap();
                slots.push(Open {
                    ingest,
                    content,
                    written: 0,
                    expect,
                    limit,
                    failed: false,
                });
            }
            Op::Write { slot, bytes } => {
                if let Some(o) = slots.get_mut(slot) {
                    let data = &pool[o.content];
                    let end = (o.written + bytes).min(data.len());
                    let res = o.ingest.write(&data[o.written..end]);
                    let crosses = end as u64 > o.limit;
                    assert_eq!(res.is_err(), crosses || o.failed);
                    o.failed |= crosses;
                    o.written = end;
                }
            }
            Op::Commit { slot } => {
                if slot < slots.len() {
                    let mut o = slots.remove(slot);
                    let data = &pool[o.content];
                    if !o.failed && o.written < data.len() {
                        let crosses = data.len() as u64 > o.limit;
                        assert_eq!(o.ingest.write(&data[o.written..]).is_err(), crosses);
                    }
                    let was_verified = store.get(&sha(data)).is_some_and(|m| m.verified);
                    let result = o.ingest.commit();
                    let is_wasm = wasm_cache_core::check_wasm_header(data).is_ok();
                    let ok = data.len() as u64 <= o.limit
                        && !matches!(o.expect, Expect::Wrong)
                        && is_wasm;
                    match result {
                        Ok(c) => {
                            assert!(ok, "commit should have failed");
                            assert_eq!(c.digest, sha(data));
                            assert_eq!(c.already_present, was_verified);
                            model.insert(c.digest, data.clone());
                        }
                        Err(e) => {
                            assert!(!ok, "commit failed: {e}");
                            assert!(e.is_integrity(), "{e}");
                        }
                    }
                }
            }
            Op::Abort { slot } => {
                if slot < slots.len() {
                    slots.remove(slot).ingest.abort();
                }
            }
            Op::Drop { slot } => {
                if slot < slots.len() {
                    drop(slots.remove(slot));
                }
            }
            Op::Remove { content } => {
                let d = sha(&pool[content]);
                let existed = store.remove(&d).unwrap();
                assert_eq!(existed, model.remove(&d).is_some());
            }
            Op::Reopen { crash } => {
                let open = slots.len();
                for o in slots.drain(..) {
                    if crash {
                        self::crash(o.ingest);
                    } else {
                        drop(o);
                    }
                }
                drop(store);
                let (s, report) = FsStore::open(dir.path()).unwrap();
                store = s;
                assert_eq!(
                    report.removed_temp_files.len(),
                    if crash { open } else { 0 }
                );
                assert!(report.ignored.is_empty());
                assert!(temp_files(dir.path()).is_empty());
                assert!(store.list().iter().all(|m| !m.verified));
            }
        }
        check_against_model(&store, &model);
    }
    drop(slots);
    assert!(temp_files(dir.path()).is_empty());
    let (store, _) = FsStore::open(dir.path()).unwrap();
    check_against_model(&store, &model);
    let report = store.verify_all(false).unwrap();
    assert!(report.mismatched.is_empty() && report.missing.is_empty());
    assert_eq!(report.ok.len(), model.len());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn store_matches_model(ops in proptest::collection::vec(op_strategy(), 1..40)) {
        run_model(ops);
    }
}

/// A second open of one directory in one process shares the first store
/// (before: it deleted the first one's in-progress temporary file, and the
/// first commit failed).
#[test]
fn a_second_open_shares_the_first_and_spares_its_ingest() {
    let dir = tempfile::tempdir().unwrap();
    let (first, _) = FsStore::open(dir.path()).unwrap();
    let bytes = module(5000, 1);
    let mut ingest = first.ingest(None, 1 << 20).unwrap();
    feed(&mut ingest, &bytes, 1000);
    let (second, report) = FsStore::open(dir.path()).unwrap();
    assert!(report.removed_temp_files.is_empty(), "{report:?}");
    assert!(ingest.temp_path().exists());
    let committed = ingest.commit().unwrap();
    assert!(second.contains(&committed.digest));
    assert!(
        second.get(&committed.digest).unwrap().verified,
        "shared state"
    );
    // Through another path to the same directory, too.
    let link = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(dir.path(), link.path().join("d")).unwrap();
    let (third, _) = FsStore::open(link.path().join("d")).unwrap();
    assert!(third.get(&committed.digest).unwrap().verified);
}

/// Recovery in another process (or after `.lock` files were deleted) removes
/// only temporary files whose writer is gone: a live ingest holds its
/// temporary file's `flock`. flock(1) stands for the live writer here.
#[test]
fn recovery_removes_only_abandoned_temporary_files() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join(".tmp-0000000000000001-1.wasm.partial");
    let dead = dir.path().join(".tmp-0000000000000002-2.wasm.partial");
    fs::write(&live, b"in progress").unwrap();
    fs::write(&dead, b"abandoned").unwrap();
    let mut holder = std::process::Command::new("flock")
        .arg(&live)
        .args(["sleep", "600"])
        .process_group(0)
        .spawn()
        .expect("running flock(1) from util-linux");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::process::Command::new("flock")
        .arg("-n")
        .arg(&live)
        .arg("true")
        .status()
        .unwrap()
        .success()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "flock(1) never took the lock"
        );
    }
    // A symlink at a temporary name is removed, never followed.
    let elsewhere = tempfile::tempdir().unwrap();
    let victim = elsewhere.path().join("victim");
    fs::write(&victim, b"victim").unwrap();
    let link = dir.path().join(".tmp-0000000000000003-3.wasm.partial");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    let (_store, report) = FsStore::open(dir.path()).unwrap();
    let _ = std::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", holder.id())])
        .status();
    let _ = holder.wait();
    assert!(live.exists(), "a live writer's temporary file was deleted");
    assert!(!dead.exists());
    assert!(fs::symlink_metadata(&link).is_err());
    assert_eq!(fs::read(&victim).unwrap(), b"victim");
    assert_eq!(report.removed_temp_files.len(), 2, "{report:?}");
}

/// Per-key download locks: a second taker waits until the deadline and
/// fails naming the lock; released, the lock file is gone; a symlink at the
/// lock's name is replaced, never followed.
#[test]
fn key_locks_exclude_bound_their_wait_and_refuse_symlinks() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = FsStore::open(dir.path()).unwrap();
    let soon = || std::time::Instant::now() + std::time::Duration::from_millis(100);
    let held = store.lock_key("k", soon(), &mut |_| {}).unwrap();
    let mut waited = 0;
    let err = store
        .lock_key("k", soon(), &mut |_| waited += 1)
        .unwrap_err();
    assert_eq!(waited, 1, "the wait is reported once");
    assert_eq!(err.kind(), StoreErrorKind::Busy);
    assert!(
        err.to_string()
            .contains(&store.key_lock_path("k").display().to_string()),
        "{err}"
    );
    let other = store.lock_key("other key", soon(), &mut |_| {}).unwrap();
    drop((held, other));
    assert!(!store.key_lock_path("k").exists());
    let elsewhere = tempfile::tempdir().unwrap();
    let target = elsewhere.path().join("created");
    std::os::unix::fs::symlink(&target, store.key_lock_path("k")).unwrap();
    let again = store.lock_key("k", soon(), &mut |_| {}).unwrap();
    assert!(
        fs::symlink_metadata(&target).is_err(),
        "created through a dangling symlink"
    );
    assert!(fs::symlink_metadata(again.path()).unwrap().is_file());
}

/// Replaces a module file's content in place (same inode, same size) and
/// sets its modification time back: what only the file's owner can do.
fn rewrite_keeping_mtime(path: &Path, content: &[u8]) {
    let before = fs::metadata(path).unwrap();
    let f = fs::OpenOptions::new().write(true).open(path).unwrap();
    use std::io::Write as _;
    (&f).write_all(content).unwrap();
    f.set_times(fs::FileTimes::new().set_modified(before.modified().unwrap()))
        .unwrap();
    drop(f);
    let after = fs::metadata(path).unwrap();
    assert_eq!(
        (after.ino(), after.len(), after.modified().unwrap()),
        (before.ino(), before.len(), before.modified().unwrap())
    );
}

/// Issue 19: a module this user verified is not re-hashed by the next
/// process while the file's identity (device, inode, size, mtime) is
/// unchanged. To show that no byte is read, the content is swapped behind
/// the store's back with the identity kept (only the owner can do that):
/// `verify` still accepts it, where the old code re-hashed and refused.
/// `verify_all` (the `verify` command) ignores the mark and reads everything.
#[test]
fn an_unchanged_verified_file_is_not_hashed_again_by_the_next_process() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = module(300_000, 41);
    let digest = sha(&bytes);
    {
        let (store, _) = FsStore::open(dir.path()).unwrap();
        put(&store, &bytes);
    }
    let path = dir.path().join(digest.file_name());
    let mut forged = bytes.clone();
    forged[1000] ^= 0xff;
    rewrite_keeping_mtime(&path, &forged);
    let (store, _) = FsStore::open(dir.path()).unwrap();
    assert!(
        !store.get(&digest).unwrap().verified,
        "recovered: not verified yet"
    );
    assert!(
        store.verify(&digest).unwrap(),
        "the mark of an unchanged identity is trusted"
    );
    assert!(store.get(&digest).unwrap().verified);
    let report = store.verify_all(false).unwrap();
    assert_eq!(report.mismatched.len(), 1, "verify_all reads every byte");
    // Found wrong: the mark is gone, so no later process trusts it.
    drop(store);
    let (store, _) = FsStore::open(dir.path()).unwrap();
    assert!(
        !store.verify(&digest).unwrap(),
        "re-hashed after verify_all found it wrong"
    );
}

/// A changed file (new mtime) is re-hashed; a file re-hashed and found good
/// gets the mark again; a file owned by another user is never trusted by its
/// mark.
#[test]
fn a_changed_or_foreign_file_is_hashed_again() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = module(100_000, 42);
    let digest = sha(&bytes);
    let path = dir.path().join(digest.file_name());
    {
        let (store, _) = FsStore::open(dir.path()).unwrap();
        put(&store, &bytes);
    }
    // Touched (same content, new mtime): re-hashed, accepted, marked again.
    let later =
        fs::metadata(&path).unwrap().modified().unwrap() + std::time::Duration::from_secs(5);
    fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_times(fs::FileTimes::new().set_modified(later))
        .unwrap();
    {
        let (store, _) = FsStore::open(dir.path()).unwrap();
        assert!(store.verify(&digest).unwrap());
    }
    // Now the mark matches again: a forged content with that mtime passes...
    let mut forged = bytes.clone();
    forged[50] ^= 1;
    rewrite_keeping_mtime(&path, &forged);
    {
        let (store, _) = FsStore::open(dir.path()).unwrap();
        assert!(store.verify(&digest).unwrap());
    }
    // ...but not once the file belongs to someone else.
    rustix::fs::chown(&path, Some(rustix::fs::Uid::from_raw(65534)), None).unwrap();
    {
        let (store, _) = FsStore::open(dir.path()).unwrap();
        assert!(
            !store.verify(&digest).unwrap(),
            "a foreign file is re-hashed"
        );
    }
    // A really changed file (content and mtime): re-hashed and refused.
    rustix::fs::chown(&path, Some(rustix::process::geteuid()), None).unwrap();
    fs::write(&path, &forged).unwrap();
    let (store, _) = FsStore::open(dir.path()).unwrap();
    assert!(!store.verify(&digest).unwrap());
}
