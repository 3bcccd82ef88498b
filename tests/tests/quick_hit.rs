//! A hit answered from the directory's lookup hints, without opening the
//! cache (issue 13: a CLI hit costs the same with 50,000 modules as with
//! one; issue 19: a CLI hit in 4 ms): what it writes, that an unpinned URL is
//! answered exactly as the full path's lookup would answer it, and that every
//! doubt sends it down the full path.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::{cli, file_sha256};
use wasm_cache::{Cache, GetRequest, ManualClock, PullPolicy};
use wasm_cache_testkit::http::{Route, ServerOptions, TestServer};
use wasm_cache_testkit::images::push_cncf_artifact;
use wasm_cache_testkit::modules::{sample_module, sha256_hex};
use wasm_cache_testkit::registry::{Registry, RegistryKind};

fn fetch(dir: &Path, args: &[&str]) -> Output {
    cli(dir).arg("fetch").args(args).output().unwrap()
}

fn ok_path(out: &Output) -> PathBuf {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

fn journal_lines(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("index.journal"))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// A server with two versions of one module at one URL path (`/v1`, `/v2`
/// routes and `/m.wasm` serving v1).
fn server() -> (TestServer, Vec<u8>, Vec<u8>) {
    let server = TestServer::start(ServerOptions::plain());
    let v1 = sample_module(40_000, 1);
    let v2 = sample_module(41_000, 2);
    server.route("/m.wasm", Route::bytes(v1.clone()));
    server.route("/v2.wasm", Route::bytes(v2.clone()));
    (server, v1, v2)
}

#[test]
fn a_pinned_cli_hit_reads_no_journal_writes_one_record_and_needs_no_server() {
    let (server, v1, _) = server();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let url = server.url("/m.wasm");
    let sum = sha256_hex(&v1);
    let first = ok_path(&fetch(dir, &[&url, "--sha256", &sum]));
    assert_eq!(server.hits("/m.wasm"), 1);
    // The hint names are hashes: no URL (nor any part of one) is a file name.
    for sub in [".keys", ".urls"] {
        for name in common::dir_names(&dir.join(sub)) {
            assert!(
                !name.contains("127.0.0.1") && !name.contains("m.wasm"),
                "{name}"
            );
        }
    }
    drop(server);

    let before = journal_lines(dir);
    let out = fetch(dir, &[&url, "--sha256", &sum, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["cached"], true);
    assert_eq!(json["sha256"], sum);
    assert_eq!(json["size"], v1.len());
    assert_eq!(PathBuf::from(json["path"].as_str().unwrap()), first);
    let after = journal_lines(dir);
    assert_eq!(after.len(), before.len() + 1, "one record per hit");
    assert!(
        after.last().unwrap().contains("\"op\":\"touch\""),
        "{after:?}"
    );
    assert_eq!(file_sha256(&first), sum);

    // The full path sees the hit's last use.
    let list = cli(dir).args(["list", "--json"]).output().unwrap();
    assert!(list.status.success());
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(text.contains(&sum), "{text}");
}

#[test]
fn a_vanished_or_corrupt_module_is_fetched_again_through_the_full_path() {
    let (server, v1, _) = server();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let url = server.url("/m.wasm");
    let sum = sha256_hex(&v1);
    let path = ok_path(&fetch(dir, &[&url, "--sha256", &sum]));

    // Same size, other bytes: the hint still names it, the check refuses it.
    let mut bad = v1.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    std::fs::write(&path, &bad).unwrap();
    let again = ok_path(&fetch(dir, &[&url, "--sha256", &sum]));
    assert_eq!(again, path);
    assert_eq!(file_sha256(&path), sum);
    assert_eq!(
        server.hits("/m.wasm"),
        2,
        "the corrupt module was downloaded again"
    );

    std::fs::remove_file(&path).unwrap();
    let again = ok_path(&fetch(dir, &[&url, "--sha256", &sum]));
    assert_eq!(file_sha256(&again), sum);
    assert_eq!(
        server.hits("/m.wasm"),
        3,
        "the vanished module was downloaded again"
    );

    // And with the server gone, a hint whose file vanished is a clear failure,
    // not a dangling path.
    drop(server);
    std::fs::remove_file(&path).unwrap();
    let out = fetch(dir, &[&url, "--sha256", &sum, "--timeout", "2s"]);
    assert!(!out.status.success());
    assert!(!path.exists());
}

#[test]
fn a_quick_hit_records_the_urls_checksum_as_a_full_hit_does() {
    let (server, v1, v2) = server();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let url = server.url("/m.wasm");
    let (s1, s2) = (sha256_hex(&v1), sha256_hex(&v2));
    ok_path(&fetch(dir, &[&url, "--sha256", &s1]));
    // The URL now serves v2, pinned: its record says v2.
    server.route("/m.wasm", Route::bytes(v2.clone()));
    ok_path(&fetch(dir, &[&url, "--sha256", &s2]));
    drop(server);
    // A quick hit pinned to v1 records v1 for the URL again (Istio's
    // touchEntry), so an unpinned if-not-present request gets v1 offline.
    let before = journal_lines(dir).len();
    ok_path(&fetch(dir, &[&url, "--sha256", &s1]));
    let lines = journal_lines(dir);
    assert_eq!(lines.len(), before + 2, "{lines:?}");
    assert!(lines[before].contains("\"op\":\"record\""), "{lines:?}");
    let unpinned = ok_path(&fetch(
        dir,
        &[&url, "--policy", "if-not-present", "--timeout", "2s"],
    ));
    assert_eq!(file_sha256(&unpinned), s1);
    // Once recorded, the next quick hit writes only its last use.
    let before = journal_lines(dir).len();
    ok_path(&fetch(dir, &[&url, "--sha256", &s1]));
    assert_eq!(journal_lines(dir).len(), before + 1);
}

#[test]
fn hints_deleted_or_planted_by_hand_never_serve_a_wrong_module() {
    let (server, v1, v2) = server();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let url = server.url("/m.wasm");
    let url2 = server.url("/v2.wasm");
    let (s1, s2) = (sha256_hex(&v1), sha256_hex(&v2));
    ok_path(&fetch(dir, &[&url, "--sha256", &s1]));
    ok_path(&fetch(dir, &[&url2, "--sha256", &s2]));

    // Every key hint now names v2's file: the pinned v1 request must not get it.
    for name in common::dir_names(&dir.join(".keys")) {
        std::fs::write(dir.join(".keys").join(name), format!("{s2}\n")).unwrap();
    }
    let got = ok_path(&fetch(dir, &[&url, "--sha256", &s1]));
    assert_eq!(file_sha256(&got), s1);

    // No hints at all: the full path answers, and the next open writes them again.
    std::fs::remove_dir_all(dir.join(".keys")).unwrap();
    std::fs::remove_dir_all(dir.join(".urls")).unwrap();
    drop(server);
    let got = ok_path(&fetch(dir, &[&url, "--sha256", &s1, "--timeout", "2s"]));
    assert_eq!(file_sha256(&got), s1);
    assert_eq!(common::dir_names(&dir.join(".keys")).len(), 2);
    let before = journal_lines(dir).len();
    ok_path(&fetch(dir, &[&url2, "--sha256", &s2]));
    assert_eq!(journal_lines(dir).len(), before + 1);
}

#[test]
fn the_library_answers_only_requests_it_has_hints_for() {
    let (server, v1, _) = server();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().to_path_buf();
    let url = server.url("/m.wasm");
    let sum = sha256_hex(&v1);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let cache = Cache::builder(&dir)
            .background_purge(false)
            .build()
            .await
            .unwrap();
        cache
            .get(&GetRequest::new(&url).checksum(&sum))
            .await
            .unwrap();
        cache.shutdown().await.unwrap();
    });
    let pinned = GetRequest::new(&url).checksum(&sum);
    let hit = Cache::hit_in_dir(&dir, &pinned)
        .unwrap()
        .expect("a pinned hit");
    assert!(hit.cached);
    assert_eq!(hit.sha256.to_hex(), sum);
    // The pinned get recorded the checksum for the URL (resource "" at
    // version ""): an unpinned request from that resource, or under a policy
    // that ignores resource versions, takes it as `get` would.
    for unpinned in [
        GetRequest::new(&url),
        GetRequest::new(&url)
            .resource("r", "7")
            .pull_policy(PullPolicy::IfNotPresent),
    ] {
        let hit = Cache::hit_in_dir(&dir, &unpinned)
            .unwrap()
            .expect("an unpinned hit through the URL's record");
        assert_eq!(hit.sha256.to_hex(), sum);
    }
    // Another resource version under a policy that re-pulls for it, or a URL
    // with no record: not answered here.
    for not_here in [
        GetRequest::new(&url).resource("r", "7"),
        GetRequest::new(&url)
            .resource("r", "7")
            .pull_policy(PullPolicy::Always),
        GetRequest::new(server.url("/never-fetched.wasm")).pull_policy(PullPolicy::IfNotPresent),
    ] {
        assert!(Cache::hit_in_dir(&dir, &not_here).unwrap().is_none());
    }
    let other = GetRequest::new(&url).checksum(sha256_hex(b"other"));
    assert!(Cache::hit_in_dir(&dir, &other).unwrap().is_none());
    let empty = tempfile::tempdir().unwrap();
    assert!(Cache::hit_in_dir(empty.path(), &pinned).unwrap().is_none());
    assert!(
        !empty.path().join(".keys").exists(),
        "a quick lookup creates nothing"
    );
}

#[test]
fn an_unpinned_cli_hit_needs_no_server_and_follows_the_urls_record() {
    let (server, v1, v2) = server();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let url = server.url("/m.wasm");
    let (s1, s2) = (sha256_hex(&v1), sha256_hex(&v2));
    let first = ok_path(&fetch(dir, &[&url, "--resource-version", "1"]));
    assert_eq!(file_sha256(&first), s1);
    assert_eq!(server.hits("/m.wasm"), 1);

    // The same resource version again: a hit, one last-use record, no request.
    let before = journal_lines(dir).len();
    let out = fetch(dir, &[&url, "--resource-version", "1", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["cached"], true, "{json}");
    assert_eq!(json["sha256"], s1);
    assert_eq!(server.hits("/m.wasm"), 1);
    let lines = journal_lines(dir);
    assert_eq!(lines.len(), before + 1, "{lines:?}");
    assert!(lines.last().unwrap().contains("\"op\":\"touch\""));

    // The URL now serves v2. A new resource version re-pulls (http keeps the
    // reference's "always" semantics) and the URL's record says v2 ...
    server.route("/m.wasm", Route::bytes(v2.clone()));
    let second = ok_path(&fetch(dir, &[&url, "--resource-version", "2"]));
    assert_eq!(file_sha256(&second), s2);
    assert_eq!(server.hits("/m.wasm"), 1, "one request since the new route");
    // ... which the next hits follow, with the server gone: the same resource
    // version, and any under if-not-present.
    drop(server);
    for args in [
        &["--resource-version", "2"][..],
        &["--resource-version", "3", "--policy", "if-not-present"][..],
    ] {
        let mut all = vec![url.as_str(), "--timeout", "2s"];
        all.extend_from_slice(args);
        let got = ok_path(&fetch(dir, &all));
        assert_eq!(got, second, "{args:?}");
    }
    // A resource version the record has not seen, under a policy that
    // re-pulls for it: the full path, which needs the (gone) server.
    let out = fetch(dir, &[&url, "--resource-version", "4", "--timeout", "2s"]);
    assert!(!out.status.success());
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn a_removed_entrys_url_hints_go_with_its_checksum_records() {
    // Removing an entry drops the checksum records of its URLs. Their `.urls`
    // hints must go with them: otherwise, once another tag with the same
    // manifest is cached under the same key (repository, manifest digest),
    // a quick unpinned hit answers the first tag, which the full path no
    // longer has a record for and would pull again (the tag may have moved).
    let registry = Registry::start(RegistryKind::Plain);
    let module = sample_module(30_000, 7);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (a, b) = rt.block_on(async {
        (
            push_cncf_artifact(&registry, "gap/m", "a", &module).await,
            push_cncf_artifact(&registry, "gap/m", "b", &module).await,
        )
    });
    assert_eq!(a.manifest_digest, b.manifest_digest);
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().to_path_buf();
    let clock = ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000));
    let open = || {
        Cache::builder(&dir)
            .background_purge(false)
            .insecure_hosts([registry.host()])
            .clock(Arc::new(clock.clone()))
            .expiry(Duration::from_secs(60))
            .build()
    };
    rt.block_on(async {
        let cache = open().await.unwrap();
        cache.get(&GetRequest::new(&a.url)).await.unwrap();
        clock.advance(Duration::from_secs(3600));
        let report = cache.purge().await.unwrap();
        assert_eq!(report.expired.len(), 1, "{report:?}");
        assert!(cache.checksum_record(&a.url).is_none());
        cache.get(&GetRequest::new(&b.url)).await.unwrap();
        cache.shutdown().await.unwrap();
    });
    let quick = |url: &str| Cache::hit_in_dir(&dir, &GetRequest::new(url)).unwrap();
    assert!(
        quick(&b.url).is_some(),
        "the tag cached last is a quick hit"
    );
    assert!(
        quick(&a.url).is_none(),
        "the purged tag's hint outlived its checksum record"
    );
    // The full path agrees: no record for the purged tag.
    rt.block_on(async {
        let cache = open().await.unwrap();
        assert!(cache.checksum_record(&a.url).is_none());
        assert!(cache.checksum_record(&b.url).is_some());
        cache.shutdown().await.unwrap();
    });
}
