//! Single flight with credentials and per-caller deadlines (issue 14, item 2),
//! through the public API against the real htpasswd `docker-registry` and the
//! testkit HTTP server on loopback.
//!
//! - Callers with different pull secrets never share a download's outcome: a
//!   valid secret never receives a wrong one's `Unauthorized`, and a wrong
//!   secret never receives the module another caller's credentials fetched.
//! - Each caller keeps its own deadline: a waiter with a short timeout stops
//!   at it even when the download it waits for goes on; a waiter whose leader
//!   ran out of (shorter) time tries again itself.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{assert_module_at, builder, clock, req};
use wasm_cache::{ErrorKind, PullSecret};
use wasm_cache_testkit::http::{Route, ServerOptions, TestServer};
use wasm_cache_testkit::images::push_oci_image;
use wasm_cache_testkit::modules::sample_module;
use wasm_cache_testkit::registry::{Registry, RegistryKind, docker_config_json};

/// A generous bound past a caller's own timeout (a hang detector, not a speed test).
const SLACK: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_callers_four_pull_secrets_never_share_an_outcome() {
    let registry = Registry::start(RegistryKind::BasicAuth);
    let (user, password) = registry.credentials().unwrap();
    let (user, password) = (user.to_owned(), password.to_owned());
    let module = sample_module(64 * 1024, 14);
    let pushed = push_oci_image(&registry, "org/private", "v1", &module).await;
    let host = registry.host();
    // Two valid secrets with different bytes (the `auth` form and the
    // `username`/`password` form), two wrong ones.
    let valid_a = docker_config_json(&host, &user, &password);
    let valid_b = serde_json::to_vec(&serde_json::json!({
        "auths": { host.clone(): { "username": user, "password": password } }
    }))
    .unwrap();
    let wrong_c = docker_config_json(&host, &user, "not-the-password");
    let wrong_d = docker_config_json(&host, "somebody-else", "guess");
    let secrets = [
        (true, PullSecret::new(valid_a)),
        (true, PullSecret::new(valid_b)),
        (false, PullSecret::new(wrong_c)),
        (false, PullSecret::new(wrong_d)),
    ];

    let dir = tempfile::tempdir().unwrap();
    let cache = builder(dir.path(), &clock())
        .insecure_hosts([host.clone()])
        .build()
        .await
        .unwrap();
    let mark = registry.sync_requests().len();

    let barrier = Arc::new(tokio::sync::Barrier::new(16));
    let mut tasks = Vec::new();
    for i in 0..16 {
        let (valid, secret) = secrets[i % 4].clone();
        let cache = cache.clone();
        let barrier = Arc::clone(&barrier);
        let request = req(&pushed.url, "1").pull_secret(secret);
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            (i, valid, cache.get(&request).await)
        }));
    }
    let mut ok = 0;
    let mut refused = 0;
    for t in tasks {
        let (i, valid, got) = t.await.unwrap();
        match (valid, got) {
            (true, Ok(path)) => {
                assert_module_at(&path, &module);
                ok += 1;
            }
            (true, Err(e)) => panic!("caller {i} has a valid pull secret and failed: {e}"),
            (false, Ok(path)) => panic!(
                "caller {i} has a wrong pull secret and was handed {} (fetched with another caller's credentials)",
                path.display()
            ),
            (false, Err(e)) => {
                assert_eq!(
                    e.kind(),
                    ErrorKind::Unauthorized,
                    "caller {i}: a wrong pull secret fails as unauthorized: {e}"
                );
                refused += 1;
            }
        }
    }
    assert_eq!((ok, refused), (8, 8));

    let requests = registry.sync_requests();
    let layer_gets = requests[mark..]
        .iter()
        .filter(|q| q.is_blob_get() && q.path.ends_with(&pushed.layer_digest))
        .count();
    assert!(
        (1..=2).contains(&layer_gets),
        "at most one download per valid credential group (2 groups), got {layer_gets} GETs of the layer"
    );
    cache.shutdown().await.unwrap();
}

/// A caller with a short timeout that joins a slow download stops at its own
/// deadline; the download it waited for is not its problem.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_waiter_behind_a_slow_leader_returns_at_its_own_timeout() {
    let server = TestServer::start(ServerOptions::plain());
    server.route("/slow.wasm", Route::Hang);
    let dir = tempfile::tempdir().unwrap();
    let cache = builder(dir.path(), &clock()).build().await.unwrap();
    let url = server.url("/slow.wasm");

    let leader = {
        let cache = cache.clone();
        let request = req(&url, "1").timeout(Duration::from_secs(60));
        tokio::spawn(async move { cache.get(&request).await })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.hits("/slow.wasm") == 0 {
        assert!(
            Instant::now() < deadline,
            "the leader never reached the server"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let short = Duration::from_millis(300);
    let started = Instant::now();
    let got = tokio::time::timeout(short + SLACK, cache.get(&req(&url, "1").timeout(short))).await;
    let elapsed = started.elapsed();
    let Ok(got) = got else {
        panic!("a waiter with a {short:?} timeout was still waiting after {elapsed:?}");
    };
    let e = got.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    assert_eq!(
        server.hits("/slow.wasm"),
        1,
        "the waiter shared the leader's download instead of starting its own"
    );
    assert!(!leader.is_finished(), "the leader's download goes on");
    leader.abort();
    let _ = leader.await;
    assert!(common::module_files(dir.path()).is_empty());
}

/// A caller with a long timeout that waited for a download whose leader ran
/// out of its shorter time tries again itself and gets the module.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_waiter_retries_when_its_leader_timed_out() {
    let module = sample_module(10_000, 15);
    let server = TestServer::start(ServerOptions::plain());
    server.route("/m.wasm", Route::Hang);
    let dir = tempfile::tempdir().unwrap();
    let cache = builder(dir.path(), &clock()).build().await.unwrap();
    let url = server.url("/m.wasm");

    let leader_timeout = Duration::from_secs(2);
    let leader_started = Instant::now();
    let leader = {
        let cache = cache.clone();
        let request = req(&url, "1").timeout(leader_timeout);
        tokio::spawn(async move { cache.get(&request).await })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.hits("/m.wasm") == 0 {
        assert!(
            Instant::now() < deadline,
            "the leader never reached the server"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The leader's request hangs; from now on the server answers (and counts
    // afresh), so only a new request can get the module.
    server.route("/m.wasm", Route::bytes(module.clone()));
    let waiter_req = req(&url, "1").timeout(Duration::from_secs(30));
    let waiter = cache.get(&waiter_req);
    let got = tokio::time::timeout(leader_timeout + Duration::from_secs(30), waiter)
        .await
        .expect("the waiter hung");
    let waiter_done = Instant::now();
    let leader_got = leader.await.unwrap();

    let e = leader_got.unwrap_err();
    assert_eq!(
        e.kind(),
        ErrorKind::Timeout,
        "the leader ran out of time: {e}"
    );
    let path = got.unwrap_or_else(|e| panic!("the waiter had time left and failed: {e}"));
    assert_module_at(&path, &module);
    // Had it not waited for the leader, it would have been done in
    // milliseconds; it waited until the leader's deadline, then fetched.
    assert!(
        waiter_done >= leader_started + leader_timeout,
        "the waiter finished {:?} after the leader started, before the leader's {leader_timeout:?} deadline: it did not wait for the leader",
        waiter_done - leader_started
    );
    assert_eq!(
        server.hits("/m.wasm"),
        1,
        "the waiter downloaded once itself after the leader timed out"
    );
    cache.shutdown().await.unwrap();
}

/// A leader whose caller gives up (its future is dropped, as when a newer
/// config push supersedes the request) does not strand the callers waiting
/// on its download: one of them takes over and gets the module.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_leader_does_not_strand_its_waiters() {
    let module = sample_module(10_000, 16);
    let server = TestServer::start(ServerOptions::plain());
    server.route("/m.wasm", Route::Hang);
    let dir = tempfile::tempdir().unwrap();
    let cache = builder(dir.path(), &clock()).build().await.unwrap();
    let url = server.url("/m.wasm");

    let leader = {
        let cache = cache.clone();
        let request = req(&url, "1").timeout(Duration::from_secs(120));
        tokio::spawn(async move { cache.get(&request).await })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.hits("/m.wasm") == 0 {
        assert!(
            Instant::now() < deadline,
            "the leader never reached the server"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.route("/m.wasm", Route::bytes(module.clone()));
    let waiter = {
        let cache = cache.clone();
        let request = req(&url, "1").timeout(Duration::from_secs(120));
        tokio::spawn(async move { cache.get(&request).await })
    };
    // Give the waiter a chance to join the leader's flight, then drop the leader.
    tokio::task::yield_now().await;
    leader.abort();
    assert!(leader.await.unwrap_err().is_cancelled());
    let got = tokio::time::timeout(Duration::from_secs(30), waiter)
        .await
        .expect("the waiter was stranded by its abandoned leader")
        .unwrap();
    let path = got.unwrap_or_else(|e| panic!("the waiter failed: {e}"));
    assert_module_at(&path, &module);
    assert_eq!(
        server.hits("/m.wasm"),
        1,
        "one download after the leader left"
    );
    cache.shutdown().await.unwrap();
}
