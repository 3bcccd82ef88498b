//! A purge whose file removal fails keeps the entry *and* the URL's checksum
//! record (issue 14, item 4): afterwards the module is still served without a
//! request for the recorded URL and version. The removal is made to fail with
//! the immutable attribute (`chattr +i`, root on ext4, as in CI), which even
//! root cannot unlink through.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{assert_module_at, builder, clock, req};
use wasm_cache_testkit::http::{Route, ServerOptions, TestServer};
use wasm_cache_testkit::modules::{sample_module, sha256_hex};

fn chattr(flag: &str, path: &Path) {
    let out = Command::new("chattr")
        .arg(flag)
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("running chattr (e2fsprogs): {e}"));
    assert!(
        out.status.success(),
        "chattr {flag} {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Clears the immutable attribute on drop, so the temporary directory can go
/// even when an assertion fails.
struct Immutable(PathBuf);

impl Immutable {
    fn set(path: &Path) -> Self {
        chattr("+i", path);
        Self(path.to_owned())
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}

#[tokio::test]
async fn a_failed_purge_removal_keeps_the_entry_and_the_checksum_record() {
    let module = sample_module(9_000, 61);
    let server = TestServer::start(ServerOptions::plain());
    server.route("/m.wasm", Route::bytes(module.clone()));
    let url = server.url("/m.wasm");
    let dir = tempfile::tempdir().unwrap();
    let c = clock();
    let cache = builder(dir.path(), &c)
        .expiry(Duration::from_secs(3600))
        .build()
        .await
        .unwrap();
    let p = cache.get(&req(&url, "1")).await.unwrap();
    let rec_before = cache.checksum_record(&url).unwrap();
    assert_eq!(rec_before.checksum.to_hex(), sha256_hex(&module));

    let guard = Immutable::set(&p);
    c.advance(Duration::from_secs(3601));
    let report = cache.purge().await.unwrap();
    assert!(report.failures >= 1, "the removal must fail: {report:?}");
    assert!(p.exists());
    assert_eq!(
        cache.entries().len(),
        1,
        "the entry is restored: {report:?}"
    );
    assert_eq!(
        cache.checksum_record(&url),
        Some(rec_before.clone()),
        "the URL's checksum record is restored with its entry"
    );
    // Still served, without a request, for the recorded URL and version.
    let got = cache.get(&req(&url, "1")).await.unwrap();
    assert_eq!(got, p);
    assert_module_at(&got, &module);
    assert_eq!(server.hits("/m.wasm"), 1);
    // The restore was journaled: a restart sees the same.
    cache.shutdown().await.unwrap();
    let cache = builder(dir.path(), &c)
        .expiry(Duration::from_secs(3600))
        .build()
        .await
        .unwrap();
    assert_eq!(cache.checksum_record(&url), Some(rec_before));
    assert_eq!(cache.get(&req(&url, "1")).await.unwrap(), p);
    assert_eq!(server.hits("/m.wasm"), 1);

    // Once the file can go, the next expiry purge removes entry, record and file.
    drop(guard);
    c.advance(Duration::from_secs(3601));
    let report = cache.purge().await.unwrap();
    assert_eq!(
        (report.expired.len(), report.failures),
        (1, 0),
        "{report:?}"
    );
    assert!(!p.exists());
    assert!(cache.entries().is_empty());
    assert!(cache.checksum_record(&url).is_none());
}
