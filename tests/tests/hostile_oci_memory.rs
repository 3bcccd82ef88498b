//! Unbounded answers from a hostile registry: an endless manifest and a huge
//! token-service answer. Reading stops at the limit (4 MiB, 1 MiB) and the
//! error names it; the process's peak memory stays far below what was sent.
//! A test binary of its own, with a single test, so the peak it reads
//! (`VmHWM`) is this test's alone.

mod common;

use std::time::{Duration, Instant};

use wasm_cache::OciFetcher;
use wasm_cache_core::{Error, ErrorKind, FetchRequest, Fetcher, ModuleUrl, PullSecret};
use wasm_cache_testkit::http::{Route, ServerOptions, TestServer};
use wasm_cache_testkit::registry::docker_config_json;

/// The process's peak resident set (`VmHWM`), in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmHWM in /proc/self/status");
    kb * 1024
}

async fn fetch_err(f: &OciFetcher, req: &FetchRequest) -> Error {
    let mut sink = Vec::new();
    match tokio::time::timeout(Duration::from_secs(60), f.fetch(req, &mut sink)).await {
        Ok(Ok(_)) => panic!("{} was fetched", req.url),
        Ok(Err(e)) => e,
        Err(_) => panic!("{} hung", req.url),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_manifests_and_huge_token_answers_stop_at_their_limits() {
    let server = TestServer::start(ServerOptions::plain());
    let host = server.host_port();
    let f = OciFetcher::builder()
        .docker_config_dir(None)
        .insecure_hosts([host.clone()])
        .build()
        .unwrap();
    // Enough time to read gigabytes on loopback if nothing stopped the reading.
    let req = |tag: &str| {
        FetchRequest::new(
            ModuleUrl::parse(&format!("oci://{host}/org/m:{tag}")).unwrap(),
            Instant::now() + Duration::from_secs(20),
        )
    };

    server.route("/v2/org/m/manifests/endless", Route::Endless);
    let e = fetch_err(&f, &req("endless")).await;
    assert_eq!(e.kind(), ErrorKind::Manifest, "{e}");
    assert!(e.to_string().contains("limit of 4194304 bytes"), "{e}");

    // 400 MB announced, and endless without a length.
    let realm = server.url("/token");
    let challenge = Route::Status(401).with_header(
        "www-authenticate",
        &format!(r#"Bearer realm="{realm}",service="fake",scope="repository:org/m:pull""#),
    );
    let secret = PullSecret::new(docker_config_json(&host, "u", "p4ssw0rd"));
    for token in [
        Route::Generated {
            size: 400_000_000,
            seed: 1,
        },
        Route::Endless,
    ] {
        server.route("/v2/org/m/manifests/private", challenge.clone());
        server.route("/token", token);
        let e = fetch_err(&f, &req("private").with_pull_secret(Some(secret.clone()))).await;
        assert_eq!(e.kind(), ErrorKind::Unauthorized, "{e}");
        assert!(e.to_string().contains("limit of 1048576 bytes"), "{e}");
        assert!(!e.to_string().contains("p4ssw0rd"), "{e}");
    }
    let peak = peak_rss();
    assert!(
        peak < 64 * 1024 * 1024,
        "peak RSS {} MiB: an answer was buffered",
        peak >> 20
    );
}
