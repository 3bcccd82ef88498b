//! The composed cache (`wasm_cache::Cache`, default fetchers) against a hostile
//! or broken HTTP server and hostile inputs: every case must end in a clear
//! error (no panic, no hang past the deadline) and lose nothing (no partial
//! file visible, the module cached before the attack still served).
//!
//! The server is the testkit's real loopback server; faults are its routes.

mod common;

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use common::{HANG_SLACK, assert_no_secret, assert_store_consistent, cli, module_files, within};
use wasm_cache::{Cache, CacheBuilder, ErrorKind, GetRequest};
use wasm_cache_testkit::http::{Route, ServerOptions, TestServer};
use wasm_cache_testkit::modules::{gzip, sample_module, sha256_hex};

/// A cache that already holds one good module, and the server it came from.
struct Fixture {
    server: TestServer,
    dir: tempfile::TempDir,
    cache: Cache,
    good: Vec<u8>,
    good_req: GetRequest,
    good_path: PathBuf,
    /// Modules a test stored on purpose, besides the good one.
    stored: Mutex<BTreeSet<String>>,
}

impl Fixture {
    async fn new() -> Self {
        Self::with(|b| b).await
    }

    async fn with(configure: impl FnOnce(CacheBuilder) -> CacheBuilder) -> Self {
        let server = TestServer::start(ServerOptions::plain());
        let good = sample_module(40_000, 1);
        server.route("/good.wasm", Route::bytes(good.clone()));
        let dir = tempfile::tempdir().unwrap();
        let cache = configure(Cache::builder(dir.path()).background_purge(false))
            .build()
            .await
            .unwrap();
        let good_req = GetRequest::new(server.url("/good.wasm"))
            .resource("ns/good", "1")
            .timeout(Duration::from_secs(20));
        let good_path = cache.get(&good_req).await.unwrap();
        Self {
            server,
            dir,
            cache,
            good,
            good_req,
            good_path,
            stored: Mutex::default(),
        }
    }

    /// Records that the test stored `module` on purpose.
    fn stored(&self, module: &[u8]) {
        self.stored.lock().unwrap().insert(sha256_hex(module));
    }

    /// A request for `path` on the fixture's server with a short timeout.
    fn req(&self, path: &str) -> GetRequest {
        GetRequest::new(self.server.url(path))
            .resource("ns/attacked", "1")
            .timeout(Duration::from_secs(3))
    }

    /// Serves `route` at `path` and gets it, which must fail within the
    /// request's deadline; then checks that nothing was lost or left behind.
    async fn attack(&self, path: &str, route: Route) -> wasm_cache::Error {
        self.server.route(path, route);
        self.must_fail(&self.req(path)).await
    }

    async fn must_fail(&self, req: &GetRequest) -> wasm_cache::Error {
        let result = within(req.timeout + HANG_SLACK, "a get", self.cache.get(req)).await;
        let err = match result {
            Ok(p) => panic!("{req:?} succeeded with {}", p.display()),
            Err(e) => e,
        };
        self.assert_intact().await;
        err
    }

    /// Nothing lost, nothing partial: the only module file is the good one,
    /// it is served again without a download, and the store agrees with the index.
    async fn assert_intact(&self) {
        let mut expected = self.stored.lock().unwrap().clone();
        expected.insert(sha256_hex(&self.good));
        assert_eq!(
            module_files(self.dir.path()),
            expected,
            "only the good module (and those stored on purpose) may be in the store"
        );
        assert_store_consistent(&self.cache);
        let hits = self.server.hits("/good.wasm");
        let path = self.cache.get(&self.good_req).await.unwrap();
        assert_eq!(path, self.good_path);
        assert_eq!(std::fs::read(&path).unwrap(), self.good);
        assert_eq!(
            self.server.hits("/good.wasm"),
            hits,
            "the good module was fetched again"
        );
    }
}

fn assert_kind(err: &wasm_cache::Error, kind: ErrorKind, wording: &str) {
    let shown = err.to_string();
    assert_eq!(err.kind(), kind, "{shown}");
    assert!(shown.contains(wording), "{shown:?} lacks {wording:?}");
    assert!(
        !shown.ends_with('.'),
        "error ends with a full stop: {shown}"
    );
}

// ---------------------------------------------------------------------------
// Faults of a real server under test control
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_reset_mid_body_is_a_transport_error() {
    let f = Fixture::new().await;
    let body = sample_module(600_000, 2);
    let err = f
        .attack(
            "/reset.wasm",
            Route::Reset {
                body: body.into(),
                after: 200_000,
            },
        )
        .await;
    assert_kind(&err, ErrorKind::Transport, "/reset.wasm");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_body_with_a_correct_content_length_is_an_error() {
    let f = Fixture::new().await;
    let full = sample_module(300_000, 3);
    let route = Route::Truncated {
        body: full[..150_000].to_vec().into(),
        declared_len: full.len() as u64,
    };
    let err = f.attack("/truncated.wasm", route).await;
    assert_kind(&err, ErrorKind::Transport, "/truncated.wasm");
    // A truncated gzip stream (the body is complete, the archive is not) is
    // caught by the unboxer instead.
    let gz = gzip(&sample_module(300_000, 4));
    let err = f
        .attack(
            "/truncated.wasm.gz",
            Route::bytes(gz[..gz.len() / 2].to_vec()),
        )
        .await;
    assert_kind(&err, ErrorKind::InvalidModule, "is invalid");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_body_past_the_deadline_times_out() {
    let f = Fixture::new().await;
    let module = sample_module(1_000_000, 5);
    f.server.route(
        "/slowloris.wasm",
        Route::Stall {
            prefix: module[..64 * 1024].to_vec().into(),
            declared_len: module.len() as u64,
        },
    );
    let req = f
        .req("/slowloris.wasm")
        .timeout(Duration::from_millis(1500));
    let err = f.must_fail(&req).await;
    assert_kind(&err, ErrorKind::Timeout, "timed out");
    // Headers that never come are bounded the same way.
    f.server.route("/hang.wasm", Route::Hang);
    let req = f.req("/hang.wasm").timeout(Duration::from_millis(1500));
    let err = f.must_fail(&req).await;
    assert_kind(&err, ErrorKind::Timeout, "timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_storms_fail_within_the_deadline_and_a_flaky_server_recovers() {
    let f = Fixture::new().await;
    for code in [500, 503] {
        let path = format!("/storm{code}.wasm");
        let err = f.attack(&path, Route::Status(code)).await;
        assert_kind(&err, ErrorKind::Transport, &format!("status code {code}"));
        assert!(
            err.to_string()
                .contains("wasm module download failed after"),
            "{err}"
        );
        assert!(f.server.hits(&path) > 1, "a {code} must be retried");
    }
    // Not retried: 501 and 4xx.
    for code in [501, 404, 403] {
        let path = format!("/final{code}.wasm");
        let err = f.attack(&path, Route::Status(code)).await;
        assert!(
            err.to_string().contains(&format!("status code {code}")),
            "{err}"
        );
        assert_eq!(f.server.hits(&path), 1, "{code} must not be retried");
    }
    // A storm that passes: the module arrives whole.
    let module = sample_module(50_000, 6);
    f.server.route(
        "/flaky.wasm",
        Route::script([503, 500], Route::bytes(module.clone())),
    );
    let path = within(
        Duration::from_secs(30),
        "a flaky get",
        f.cache
            .get(&f.req("/flaky.wasm").timeout(Duration::from_secs(20))),
    )
    .await
    .unwrap();
    assert_eq!(std::fs::read(path).unwrap(), module);
    assert_eq!(f.server.hits("/flaky.wasm"), 3);
}

// ---------------------------------------------------------------------------
// Bad bodies
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_wasm_bodies_are_rejected() {
    let f = Fixture::new().await;
    let bodies: [(&str, &[u8]); 4] = [
        ("/page.wasm", b"<html><body>502 Bad Gateway</body></html>"),
        ("/empty.wasm", b""),
        ("/short.wasm", b"\0asm\x01\0\0"),
        ("/elf.wasm", b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0"),
    ];
    for (path, body) in bodies {
        let err = f.attack(path, Route::bytes(body.to_vec())).await;
        assert_kind(&err, ErrorKind::InvalidModule, "fetched Wasm binary from");
        assert!(err.to_string().contains(path), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wasm_magic_with_a_wrong_version_is_rejected() {
    let f = Fixture::new().await;
    let mut body = sample_module(10_000, 7);
    body[4] = 2;
    let err = f.attack("/v2.wasm", Route::bytes(body.clone())).await;
    assert_kind(
        &err,
        ErrorKind::InvalidModule,
        "unsupported Wasm binary version",
    );
    // The same inside a gzip and a tar: the header is checked after unboxing.
    let err = f.attack("/v2.wasm.gz", Route::bytes(gzip(&body))).await;
    assert_kind(
        &err,
        ErrorKind::InvalidModule,
        "unsupported Wasm binary version",
    );
}

/// `header` then `zeros` zero bytes, gzip-compressed without ever holding them.
fn gzip_of_zeros(header: &[u8], zeros: usize) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(header).unwrap();
    let block = vec![0u8; 64 * 1024];
    for _ in 0..zeros / block.len() {
        enc.write_all(&block).unwrap();
    }
    enc.finish().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_bomb_is_refused_at_the_size_limit() {
    const LIMIT: u64 = 1024 * 1024;
    let f = Fixture::with(|b| b.max_module_size(LIMIT)).await;
    // 16 MiB of "module" in about 16 KiB of gzip.
    let bomb = gzip_of_zeros(b"\0asm\x01\0\0\0", 16 * 1024 * 1024);
    assert!(bomb.len() < 100_000);
    let err = f.attack("/bomb.wasm.gz", Route::bytes(bomb)).await;
    assert_kind(
        &err,
        ErrorKind::InvalidModule,
        &format!("exceeds the size limit of {LIMIT} bytes"),
    );
    // A bomb of zeros (no Wasm header) fails on the header, before any limit.
    let err = f
        .attack(
            "/zeros.gz",
            Route::bytes(gzip_of_zeros(b"", 16 * 1024 * 1024)),
        )
        .await;
    assert_kind(&err, ErrorKind::InvalidModule, "is invalid");
    // A tar bomb: a skipped entry of zeros larger than the limit, then the module.
    let mut tar = tar_entry_with(b"padding.bin", &octal(4 * LIMIT), b'0', b"");
    tar.extend(std::iter::repeat_n(0u8, (4 * LIMIT) as usize));
    tar.extend(tar_entry(b"plugin.wasm", &sample_module(1000, 8)));
    tar.extend([0u8; 1024]);
    let err = f.attack("/tarbomb.tar.gz", Route::bytes(gzip(&tar))).await;
    assert_kind(&err, ErrorKind::InvalidModule, "exceeds the size limit");
    // gzip inside gzip is not unboxed twice.
    let err = f
        .attack(
            "/double.gz",
            Route::bytes(gzip(&gzip(&sample_module(1000, 9)))),
        )
        .await;
    assert_kind(&err, ErrorKind::InvalidModule, "is invalid");
}

// ---------------------------------------------------------------------------
// Hand-made tar archives (the `tar` crate refuses to write hostile headers)
// ---------------------------------------------------------------------------

/// A ustar header: `name`, a raw 12-byte size field, a type flag and a link name.
fn tar_header(name: &[u8], size: &[u8; 12], typeflag: u8, link: &[u8]) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name);
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(size);
    h[136..148].copy_from_slice(b"00000000000\0");
    h[156] = typeflag;
    h[157..157 + link.len()].copy_from_slice(link);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

fn octal(n: u64) -> [u8; 12] {
    format!("{n:011o}\0").as_bytes().try_into().unwrap()
}

/// A header only (no content): callers append what they want.
fn tar_entry_with(name: &[u8], size: &[u8; 12], typeflag: u8, link: &[u8]) -> Vec<u8> {
    tar_header(name, size, typeflag, link).to_vec()
}

/// A regular-file entry with its content and padding.
fn tar_entry(name: &[u8], content: &[u8]) -> Vec<u8> {
    let mut v = tar_header(name, &octal(content.len() as u64), b'0', b"").to_vec();
    v.extend_from_slice(content);
    v.resize(v.len().div_ceil(512) * 512, 0);
    v
}

fn tar_end(mut v: Vec<u8>) -> Vec<u8> {
    v.extend([0u8; 1024]);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tar_with_a_huge_declared_size_is_refused() {
    let f = Fixture::new().await;
    let module = sample_module(5000, 10);
    // 8 GiB - 1 in octal, the largest ustar size; the body is 5000 bytes.
    let mut huge = tar_entry_with(b"plugin.wasm", b"77777777777\0", b'0', b"");
    huge.extend_from_slice(&module);
    let huge = tar_end(huge);
    // GNU base-256 sizes: 2^88 - 1 (overflows u64) and 2^63.
    let mut b256_max = [0xffu8; 12];
    b256_max[0] = 0x80;
    let mut b256_big = [0u8; 12];
    b256_big[0] = 0x80;
    b256_big[4] = 0x80;
    let mut cases = vec![("/huge.tar", huge.clone()), ("/huge.tar.gz", gzip(&huge))];
    for (i, size) in [b256_max, b256_big].iter().enumerate() {
        let mut t = tar_entry_with(b"plugin.wasm", size, b'0', b"");
        t.extend_from_slice(&module);
        cases.push((["/b256max.tar", "/b256big.tar"][i], tar_end(t)));
    }
    // A huge skipped entry before the module: skipping is counting, never allocating.
    let mut skipped = tar_entry_with(b"README", b"77777777777\0", b'0', b"");
    skipped.extend(tar_entry(b"plugin.wasm", &module));
    cases.push(("/skipped.tar", tar_end(skipped)));
    for (path, body) in cases {
        let err = f.attack(path, Route::bytes(body)).await;
        assert_kind(&err, ErrorKind::InvalidModule, path);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tar_entry_names_never_become_paths() {
    let f = Fixture::new().await;
    let module = sample_module(7000, 11);
    let outside = tempfile::tempdir().unwrap();
    let escape = format!(
        "../../../../../../..{}/plugin.wasm",
        outside.path().display()
    );
    let absolute = format!("{}/abs/plugin.wasm", outside.path().display());
    for (i, name) in [escape.as_str(), absolute.as_str(), "../plugin.wasm"]
        .iter()
        .enumerate()
    {
        let body = tar_end(tar_entry(name.as_bytes(), &module));
        let path = format!("/traversal{i}.tar");
        f.server.route(&path, Route::bytes(gzip(&body)));
        // The entry is taken by its base name; its content goes to the
        // content-addressed path and nowhere else.
        let got = f.cache.get(&f.req(&path)).await.unwrap();
        f.stored(&module);
        assert_eq!(got.parent().unwrap(), f.cache.dir());
        assert_eq!(std::fs::read(&got).unwrap(), module);
        assert!(
            common::dir_names(outside.path()).is_empty(),
            "a tar entry name was used as a path: {:?}",
            common::dir_names(outside.path())
        );
        assert!(!f.cache.dir().parent().unwrap().join("plugin.wasm").exists());
    }
    // Links named plugin.wasm are not regular files: never followed, never served.
    for (i, flag) in [b'2', b'1'].into_iter().enumerate() {
        let body = tar_end(tar_entry_with(
            b"plugin.wasm",
            &octal(0),
            flag,
            b"/etc/passwd",
        ));
        let err = f.attack(&format!("/link{i}.tar"), Route::bytes(body)).await;
        assert_kind(&err, ErrorKind::InvalidModule, "is invalid");
    }
}

// ---------------------------------------------------------------------------
// Bad inputs from configuration
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_checksums_are_refused_before_any_request() {
    let f = Fixture::new().await;
    f.server
        .route("/m.wasm", Route::bytes(sample_module(1000, 12)));
    for bad in [
        "not-hex-at-all",
        "abc123",
        &"a".repeat(63),
        &"a".repeat(65),
        &format!("sha512:{}", "a".repeat(64)),
        &format!("{}zz", "a".repeat(62)),
        "../../../../etc/passwd",
        "sha256:",
    ] {
        let err = f.must_fail(&f.req("/m.wasm").checksum(bad)).await;
        assert_kind(&err, ErrorKind::InvalidInput, "invalid sha256 checksum");
    }
    assert_eq!(
        f.server.hits("/m.wasm"),
        0,
        "a bad checksum must not cause a request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_schemes_and_malformed_urls_are_refused() {
    let f = Fixture::new().await;
    for (url, scheme) in [
        ("file:///etc/passwd", "file"),
        ("ftp://127.0.0.1/m.wasm", "ftp"),
        ("gopher://127.0.0.1:70/m", "gopher"),
        ("javascript:alert(1)", "javascript"),
        ("data:application/wasm;base64,AGFzbQEAAAA=", "data"),
    ] {
        let err = f.must_fail(&GetRequest::new(url)).await;
        assert_kind(
            &err,
            ErrorKind::InvalidInput,
            &format!("unsupported Wasm module downloading URL scheme: {scheme}"),
        );
    }
    for url in [
        "",
        " http://127.0.0.1/x",
        "127.0.0.1/m.wasm",
        "http://",
        "oci://",
        "oci://UPPER/Case",
    ] {
        let err = f.must_fail(&GetRequest::new(url)).await;
        assert_kind(
            &err,
            ErrorKind::InvalidInput,
            "fail to parse Wasm module fetch url",
        );
    }
}

const USER_SECRET: &str = "pw-S3CRET-in-userinfo";
const QUERY_SECRET: &str = "sig-T0KEN-in-query";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_in_urls_never_appear_in_errors() {
    let f = Fixture::new().await;
    let addr = f.server.host_port();
    f.server.route("/private.wasm", Route::Status(500));
    f.server.route("/denied.wasm", Route::Status(401));
    f.server
        .route("/bad.wasm", Route::bytes(b"not wasm".to_vec()));
    let urls = [
        format!("http://admin:{USER_SECRET}@{addr}/missing.wasm?token={QUERY_SECRET}"),
        format!("http://admin:{USER_SECRET}@{addr}/private.wasm"),
        format!("http://admin:{USER_SECRET}@{addr}/denied.wasm#{QUERY_SECRET}"),
        format!("http://admin:{USER_SECRET}@{addr}/bad.wasm?X-Amz-Signature={QUERY_SECRET}"),
        format!("http://admin:{USER_SECRET}@[::1/broken"),
        format!("oci://admin:{USER_SECRET}@{addr}/repo:tag"),
        format!("ftp://admin:{USER_SECRET}@{addr}/x"),
    ];
    for url in &urls {
        let req = GetRequest::new(url).timeout(Duration::from_secs(2));
        assert_no_secret(
            &format!("{req:?}"),
            &[USER_SECRET, QUERY_SECRET],
            "a request's Debug",
        );
        let err = f.must_fail(&req).await;
        let mut shown = vec![err.to_string(), format!("{err:?}")];
        let mut source = std::error::Error::source(&err);
        while let Some(s) = source {
            shown.push(s.to_string());
            source = s.source();
        }
        for s in shown {
            assert_no_secret(&s, &[USER_SECRET, QUERY_SECRET], "an error");
        }
    }
    for e in f.cache.entries() {
        assert_no_secret(&format!("{e:?}"), &[USER_SECRET], "an entry's Debug");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_and_link_local_addresses_are_never_contacted() {
    let f = Fixture::new().await;
    for url in [
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "http://100.100.100.200/latest/meta-data/",
        "http://[fe80::1]/m.wasm",
        "http://[::ffff:169.254.169.254]/m.wasm",
    ] {
        let err = f
            .must_fail(&GetRequest::new(url).timeout(Duration::from_secs(2)))
            .await;
        assert_kind(&err, ErrorKind::Blocked, "refused to fetch");
    }
    // The guard applies to every hop of a redirect.
    let err = f
        .attack(
            "/to-metadata.wasm",
            Route::redirect("http://169.254.169.254/latest/user-data"),
        )
        .await;
    assert_kind(&err, ErrorKind::Blocked, "refused to fetch");
}

// ---------------------------------------------------------------------------
// The command, end to end
// ---------------------------------------------------------------------------

#[test]
fn cli_never_prints_url_credentials_even_with_trace_logs() {
    let server = TestServer::start(ServerOptions::plain());
    let module = sample_module(20_000, 13);
    server.route("/m.wasm", Route::bytes(module.clone()));
    server.route("/gone.wasm", Route::Status(503));
    let dir = tempfile::tempdir().unwrap();
    let addr = server.host_port();
    let ok_url = format!("http://admin:{USER_SECRET}@{addr}/m.wasm?sig={QUERY_SECRET}");
    let out = cli(dir.path())
        .args(["-vvv", "fetch", &ok_url, "--timeout", "5s"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let path = String::from_utf8(out.stdout).unwrap();
    assert_eq!(std::fs::read(path.trim_end()).unwrap(), module);
    assert!(!stderr.is_empty(), "-vvv must log something");
    assert_no_secret(&stderr, &[USER_SECRET, QUERY_SECRET], "trace logs");
    // The credentials reached the server as basic auth, so they were used, not lost.
    let seen = server.requests("/m.wasm");
    assert!(seen[0].headers.contains_key("authorization"));

    let bad_url = format!("http://admin:{USER_SECRET}@{addr}/gone.wasm?sig={QUERY_SECRET}");
    let out = cli(dir.path())
        .args(["-vvv", "fetch", &bad_url, "--timeout", "2s"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("error: "), "{stderr}");
    assert!(stderr.contains("status code 503"), "{stderr}");
    assert_no_secret(
        &stderr,
        &[USER_SECRET, QUERY_SECRET],
        "a failing fetch's output",
    );

    let out = cli(dir.path()).args(["list", "--json"]).output().unwrap();
    assert!(out.status.success());
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.contains("/m.wasm"), "{listed}");
    assert_no_secret(&listed, &[USER_SECRET, QUERY_SECRET], "list --json");
    // The journal keeps URLs as given (they are the keys of the checksum
    // records), credentials included, so only its owner may read it.
    use std::os::unix::fs::PermissionsExt as _;
    let journal = dir.path().join("index.journal");
    let text = std::fs::read_to_string(&journal).unwrap();
    assert!(text.contains("/m.wasm"), "{text}");
    let mode = std::fs::metadata(&journal).unwrap().permissions().mode();
    assert_eq!(
        mode & 0o077,
        0,
        "the journal is readable by others: {mode:o}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_flight_shares_one_clear_error_under_a_fault() {
    // Single flight under a fault: 8 concurrent gets of a resetting URL share
    // one download and all see the same clear error.
    let f = Fixture::new().await;
    f.server.route(
        "/shared-reset.wasm",
        Route::Reset {
            body: sample_module(400_000, 14).into(),
            after: 100_000,
        },
    );
    let req = f.req("/shared-reset.wasm");
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let cache = f.cache.clone();
        let req = req.clone();
        tasks.push(tokio::spawn(async move { cache.get(&req).await }));
    }
    for t in tasks {
        let r = within(req.timeout + HANG_SLACK, "a shared get", t)
            .await
            .unwrap();
        assert_eq!(r.unwrap_err().kind(), ErrorKind::Transport);
    }
    f.assert_intact().await;
}
