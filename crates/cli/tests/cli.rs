//! The `wasm-cache` command, run as a process against a real HTTP server and a
//! real registry on 127.0.0.1.

use std::path::Path;
use std::process::Output;

use assert_cmd::Command;
use wasm_cache_testkit::http::{Route, ServerOptions, TestServer};
use wasm_cache_testkit::images::push_oci_image;
use wasm_cache_testkit::modules::{sample_module, sha256_hex};
use wasm_cache_testkit::registry::{Registry, RegistryKind};

fn cli(dir: &Path) -> Command {
    let mut c = Command::cargo_bin("wasm-cache").unwrap();
    c.arg("--dir").arg(dir).env_remove("WASM_CACHE_DIR");
    c
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

/// Runs `fetch` and returns the one line it printed, asserting success.
fn fetch_ok(dir: &Path, args: &[&str]) -> String {
    let o = cli(dir).arg("fetch").args(args).output().unwrap();
    assert!(o.status.success(), "fetch {args:?} failed: {}", stderr(&o));
    let out = stdout(&o);
    assert_eq!(out.lines().count(), 1, "exactly one line: {out:?}");
    out.trim_end().to_owned()
}

fn fetch_err(dir: &Path, args: &[&str]) -> String {
    fetch_err_code(dir, args, 1)
}

/// Runs a `fetch` that must fail with `code`; returns stderr.
fn fetch_err_code(dir: &Path, args: &[&str], code: i32) -> String {
    let o = cli(dir).arg("fetch").args(args).output().unwrap();
    assert_eq!(o.status.code(), Some(code), "fetch {args:?} should fail");
    assert!(
        o.stdout.is_empty(),
        "nothing on stdout on failure: {}",
        stdout(&o)
    );
    let err = stderr(&o);
    assert!(err.starts_with("error: "), "{err}");
    err
}

#[test]
fn fetch_http_prints_the_path_and_keeps_state_across_runs() {
    let s = TestServer::start(ServerOptions::plain());
    let module = sample_module(30_000, 1);
    s.route("/m.wasm", Route::bytes(module.clone()));
    let dir = tempfile::tempdir().unwrap();
    let url = s.url("/m.wasm");
    let args = ["--resource-name", "ns/p", "--resource-version", "1"];
    let path = fetch_ok(dir.path(), &[&[url.as_str()][..], &args].concat());
    assert!(Path::new(&path).is_absolute());
    assert_eq!(std::fs::read(&path).unwrap(), module);
    assert!(path.ends_with(&format!("{}.wasm", sha256_hex(&module))));
    // A second process with the same resource version: served from disk.
    assert_eq!(
        fetch_ok(dir.path(), &[&[url.as_str()][..], &args].concat()),
        path
    );
    assert_eq!(s.hits("/m.wasm"), 1);
    // A new version pulls again (http, unspecified policy).
    fetch_ok(
        dir.path(),
        &[
            url.as_str(),
            "--resource-name",
            "ns/p",
            "--resource-version",
            "2",
        ],
    );
    assert_eq!(s.hits("/m.wasm"), 2);
    // Pinned checksum, even with the server gone.
    drop(s);
    let sum = sha256_hex(&module);
    assert_eq!(
        fetch_ok(
            dir.path(),
            &[url.as_str(), "--sha256", &sum, "--policy", "always"]
        ),
        path
    );
}

#[test]
fn fetch_oci_from_a_real_registry() {
    let r = Registry::start(RegistryKind::Plain);
    let module = sample_module(20_000, 2);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let pushed = rt.block_on(push_oci_image(&r, "org/filter", "v1", &module));
    let dir = tempfile::tempdir().unwrap();
    let path = fetch_ok(dir.path(), &[&pushed.url, "--insecure-registry", &r.host()]);
    assert_eq!(std::fs::read(&path).unwrap(), module);
    // Digest pin of the manifest.
    let digest = pushed.manifest_digest.clone();
    assert_eq!(
        fetch_ok(
            dir.path(),
            &[
                &pushed.url,
                "--sha256",
                &digest,
                "--insecure-registry",
                &r.host()
            ]
        ),
        path
    );
    // Not insecure-listed: plain HTTP is refused for a registry.
    let other = tempfile::tempdir().unwrap();
    fetch_err(other.path(), &[&pushed.url, "--timeout", "5s"]);
}

#[test]
fn bad_url_wrong_checksum_unreachable_host() {
    let dir = tempfile::tempdir().unwrap();
    // Bad input is a usage error (exit 2).
    let e = fetch_err_code(dir.path(), &["ftp://127.0.0.1/m.wasm"], 2);
    assert!(
        e.contains("unsupported Wasm module downloading URL scheme: ftp"),
        "{e}"
    );
    let e = fetch_err_code(dir.path(), &["not a url"], 2);
    assert!(e.contains("fail to parse Wasm module fetch url"), "{e}");
    let e = fetch_err_code(
        dir.path(),
        &["http://127.0.0.1/m.wasm", "--sha256", "xyz"],
        2,
    );
    assert!(e.contains("invalid sha256 checksum"), "{e}");

    let s = TestServer::start(ServerOptions::plain());
    s.route("/m.wasm", Route::bytes(sample_module(1000, 3)));
    let wrong = "0".repeat(64);
    let e = fetch_err(dir.path(), &[&s.url("/m.wasm"), "--sha256", &wrong]);
    assert!(e.contains("which does not match: 0000"), "{e}");

    // A closed port on loopback.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let e = fetch_err(
        dir.path(),
        &[
            &format!("http://127.0.0.1:{port}/m.wasm"),
            "--timeout",
            "3s",
        ],
    );
    assert!(e.contains("127.0.0.1"), "{e}");
    // Nothing was stored by the failures.
    let wasm_files = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "wasm")
        })
        .count();
    assert_eq!(wasm_files, 0);
}

#[test]
fn credentials_in_urls_and_pull_secrets_are_never_printed() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret.json");
    std::fs::write(
        &secret,
        br#"{"auths":{"127.0.0.1:1":{"auth":"dXNlcjpodW50ZXIy"}}}"#,
    )
    .unwrap();
    let o = cli(dir.path())
        .args([
            "-vv",
            "fetch",
            "http://user:hunter2@127.0.0.1:1/m.wasm?token=s3cr3t",
            "--timeout",
            "2s",
        ])
        .arg("--pull-secret")
        .arg(&secret)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    for leak in ["hunter2", "s3cr3t", "dXNlcjpodW50ZXIy"] {
        assert!(!err.contains(leak), "{leak} leaked: {err}");
    }
}

#[test]
fn list_purge_and_verify() {
    let s = TestServer::start(ServerOptions::plain());
    let a = sample_module(4_000, 4);
    let b = sample_module(5_000, 5);
    s.route("/a.wasm", Route::bytes(a.clone()));
    s.route("/b.wasm", Route::bytes(b.clone()));
    let dir = tempfile::tempdir().unwrap();
    let pa = fetch_ok(dir.path(), &[&s.url("/a.wasm")]);
    let pb = fetch_ok(dir.path(), &[&s.url("/b.wasm")]);

    let o = cli(dir.path()).args(["list", "--json"]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    // One object per line.
    let mods: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(mods.len(), 2);
    let ma = mods.iter().find(|m| m["path"] == pa.as_str()).unwrap();
    assert_eq!(ma["sha256"], sha256_hex(&a));
    assert_eq!(ma["checksum"], sha256_hex(&a));
    assert_eq!(ma["size"], 4_000);
    assert_eq!(ma["urls"][0], s.url("/a.wasm"));
    assert!(ma["last_use_unix_ms"].as_u64().unwrap() > 0);

    let o = cli(dir.path()).arg("list").output().unwrap();
    assert!(o.status.success());
    assert!(stdout(&o).contains(&sha256_hex(&b)), "{}", stdout(&o));

    // Corrupt b: verify reports it and fails; --repair removes it.
    let mut bytes = std::fs::read(&pb).unwrap();
    bytes[10] ^= 1;
    std::fs::write(&pb, bytes).unwrap();
    let o = cli(dir.path()).arg("verify").output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("1 corrupt"), "{}", stdout(&o));
    let o = cli(dir.path())
        .args(["verify", "--repair"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("1 removed"), "{}", stdout(&o));
    assert!(!Path::new(&pb).exists());
    let o = cli(dir.path()).arg("verify").output().unwrap();
    assert!(o.status.success());
    assert!(
        stdout(&o).contains("verified 1 modules: 1 ok"),
        "{}",
        stdout(&o)
    );

    // Purge with a zero expiry removes the rest.
    let o = cli(dir.path())
        .args(["purge", "--expiry", "0s"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!Path::new(&pa).exists());
    let o = cli(dir.path()).args(["list", "--json"]).output().unwrap();
    assert!(o.status.success());
    assert_eq!(stdout(&o), "", "an empty cache lists nothing");
}

#[test]
fn list_is_sorted_redacted_and_the_same_in_both_formats() {
    let s = TestServer::start(ServerOptions::plain());
    let dir = tempfile::tempdir().unwrap();
    let mut want = Vec::new();
    for (i, route) in ["/c.wasm", "/a.wasm", "/b.wasm"].iter().enumerate() {
        let m = sample_module(1_000 + i, 40 + i as u64);
        s.route(route, Route::bytes(m.clone()));
        // A signed URL: its query must never be printed.
        let url = format!("{}?sig=s3cr3t{i}", s.url(route));
        fetch_ok(dir.path(), &[&url]);
        want.push(sha256_hex(&m));
    }
    let o = cli(dir.path()).args(["list", "--json"]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let json = stdout(&o);
    assert!(!json.contains("s3cr3t"), "{json}");
    let mods: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(mods.len(), 3);
    let keys: Vec<(String, String)> = mods
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap().to_owned(),
                m["checksum"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted, "sorted by name, then checksum");
    for m in &mods {
        let sha = m["sha256"].as_str().unwrap();
        assert!(want.iter().any(|w| w == sha), "{m}");
        let path = dir
            .path()
            .canonicalize()
            .unwrap()
            .join(format!("{sha}.wasm"));
        assert_eq!(m["path"], path.display().to_string());
        assert!(m["urls"][0].as_str().unwrap().ends_with("?***"), "{m}");
        assert_eq!(m["schema"], 1);
        assert!(m["last_use"].as_str().unwrap().ends_with('Z'), "{m}");
    }
    // The table: a header, then the same modules in the same order.
    let o = cli(dir.path()).arg("list").output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let table = stdout(&o);
    assert!(!table.contains("s3cr3t"), "{table}");
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("CHECKSUM"), "{table}");
    assert_eq!(lines.len(), 4, "{table}");
    for (line, (_, checksum)) in lines[1..].iter().zip(&keys) {
        assert!(line.starts_with(checksum.as_str()), "{table}");
        assert!(line.ends_with("?***"), "{table}");
    }
    assert!(stderr(&o).contains("3 module(s)"), "{}", stderr(&o));
}

#[test]
fn dir_defaults_to_the_environment() {
    let s = TestServer::start(ServerOptions::plain());
    s.route("/m.wasm", Route::bytes(sample_module(1_000, 6)));
    let dir = tempfile::tempdir().unwrap();
    let o = Command::cargo_bin("wasm-cache")
        .unwrap()
        .env("WASM_CACHE_DIR", dir.path())
        .args(["fetch", &s.url("/m.wasm")])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).starts_with(dir.path().canonicalize().unwrap().to_str().unwrap()));
    let xdg = tempfile::tempdir().unwrap();
    let o = Command::cargo_bin("wasm-cache")
        .unwrap()
        .env_remove("WASM_CACHE_DIR")
        .env("XDG_CACHE_HOME", xdg.path())
        .args(["fetch", &s.url("/m.wasm")])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(xdg.path().join("wasm-cache").is_dir());
}

#[test]
fn usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let o = cli(dir.path()).args(["fetch"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    let o = cli(dir.path())
        .args(["fetch", "http://x/m.wasm", "--policy", "sometimes"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("possible values"), "{}", stderr(&o));
}

#[test]
fn concurrent_commands_on_one_directory_take_turns() {
    let s = TestServer::start(ServerOptions::plain());
    s.route(
        "/big.wasm",
        Route::Generated {
            size: 4 << 20,
            seed: 7,
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let url = s.url("/big.wasm");
    let children: Vec<_> = (0..4)
        .map(|_| {
            std::process::Command::new(assert_cmd::cargo::cargo_bin("wasm-cache"))
                .arg("--dir")
                .arg(dir.path())
                .args([
                    "fetch",
                    &url,
                    "--resource-name",
                    "r",
                    "--resource-version",
                    "1",
                ])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut paths = Vec::new();
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        paths.push(stdout(&o));
    }
    assert!(paths.windows(2).all(|w| w[0] == w[1]), "{paths:?}");
    // The directory lock serialises the processes; the journal carries the
    // record from one to the next, so only the first downloads.
    assert_eq!(s.hits("/big.wasm"), 1);
    assert_eq!(
        std::fs::read(paths[0].trim()).unwrap(),
        sample_module(4 << 20, 7)
    );
}

#[test]
fn verify_key_serves_only_what_a_trusted_key_signed() {
    use wasm_cache_testkit::cosign;
    let r = Registry::start(RegistryKind::Plain);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let module = sample_module(20_000, 7);
    let signed = rt.block_on(push_oci_image(&r, "org/signed", "v1", &module));
    // Other content: the same manifest, signed in org/signed, is signed
    // wherever it is (the journal remembers the digest as verified).
    let unsigned = rt.block_on(push_oci_image(
        &r,
        "org/unsigned",
        "v1",
        &sample_module(20_000, 8),
    ));
    let key = cosign::generate_p256();
    rt.block_on(cosign::sign_image(
        &r,
        "org/signed",
        &signed.manifest_digest,
        &key,
    ));
    let keys = tempfile::tempdir().unwrap();
    let cosign_pub = cosign::write_public_key(keys.path(), "cosign.pub", &key);
    let other_pub = cosign::write_public_key(keys.path(), "other.pub", &cosign::generate_ed25519());
    let dir = tempfile::tempdir().unwrap();
    let host = r.host();
    let key_arg = cosign_pub.to_str().unwrap();
    let other_arg = other_pub.to_str().unwrap();
    // Two keys, the second verifies.
    let path = fetch_ok(
        dir.path(),
        &[
            &signed.url,
            "--insecure-registry",
            &host,
            "--verify-key",
            other_arg,
            "--verify-key",
            key_arg,
        ],
    );
    assert_eq!(std::fs::read(&path).unwrap(), module);
    // Only the other key: refused, with the documented message.
    let e = fetch_err(
        dir.path(),
        &[
            &signed.url,
            "--insecure-registry",
            &host,
            "--verify-key",
            other_arg,
        ],
    );
    assert!(
        e.starts_with(&format!(
            "error: no valid signature for {}@{} by any of sha256:",
            signed.url, signed.manifest_digest
        )),
        "{e}"
    );
    let e = fetch_err(
        dir.path(),
        &[
            &unsigned.url,
            "--insecure-registry",
            &host,
            "--verify-key",
            key_arg,
        ],
    );
    assert!(e.contains("no valid signature for"), "{e}");
    // A file that is not a public key is a clear usage error.
    let e = fetch_err_code(
        dir.path(),
        &[
            &signed.url,
            "--insecure-registry",
            &host,
            "--verify-key",
            path.as_str(),
        ],
        2,
    );
    assert!(
        e.contains("public key") && e.contains("invalid public key"),
        "{e}"
    );
}

/// Issue 19: a hit builds no fetcher (and so loads no trust roots), whatever
/// the scheme; the miss before it built exactly the one it needed. A later
/// process hitting a large module does not hash it again either (its file
/// carries the store's verification mark).
#[test]
fn a_hit_builds_no_fetcher_and_rehashes_nothing() {
    let s = TestServer::start(ServerOptions::plain());
    s.route("/big.wasm", Route::bytes(sample_module(3 << 20, 77)));
    let registry = Registry::start(RegistryKind::Plain);
    let module = sample_module(40_000, 78);
    let pushed = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(push_oci_image(&registry, "cli/lazy", "v1", &module));
    let dir = tempfile::tempdir().unwrap();
    let host = registry.host();
    for args in [
        vec![s.url("/big.wasm")],
        vec![
            pushed.url.clone(),
            "--insecure-registry".into(),
            host.clone(),
        ],
    ] {
        let run = || {
            let o = cli(dir.path())
                .args(["-vv", "fetch"])
                .args(&args)
                .env("RUST_LOG", "debug")
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", stderr(&o));
            stderr(&o)
        };
        let miss = run();
        assert!(miss.contains("building the fetcher on first use"), "{miss}");
        let hit = run();
        assert!(!hit.contains("building the fetcher"), "{hit}");
        assert!(!hit.contains("system root certificates"), "{hit}");
        assert!(!hit.contains("hashing the module file"), "{hit}");
    }
}
