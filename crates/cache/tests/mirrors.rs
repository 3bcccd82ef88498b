//! Registry mirrors (issue 18) with real components on loopback: an upstream
//! `docker-registry` and a second `docker-registry` configured as its
//! pull-through cache (`proxy: remoteurl:`), both started by the testkit; a
//! testkit HTTP server only where a fault is needed that a real registry
//! does not produce (wrong bytes for a digest, 503s).

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{assert_module_at, builder, clock, module_files, req};
use wasm_cache::{Cache, Mirror};
use wasm_cache_testkit::http::{Route, ServerOptions, TestServer};
use wasm_cache_testkit::images::{Pushed, push_oci_image, push_solo_artifact};
use wasm_cache_testkit::modules::sample_module;
use wasm_cache_testkit::registry::{Registry, RegistryKind};

/// An upstream and its pull-through mirror.
fn pair() -> (Registry, Registry) {
    let upstream = Registry::start(RegistryKind::Plain);
    let mirror = Registry::start(RegistryKind::mirror_of(&upstream));
    (upstream, mirror)
}

fn mirror_url(mirror: &Registry) -> String {
    format!("http://{}", mirror.host())
}

/// A cache (one "node") whose upstream is reached over plain HTTP and whose
/// mirror is `mirror`.
async fn node(dir: &std::path::Path, upstream: &Registry, mirror: &str) -> Cache {
    builder(dir, &clock())
        .insecure_hosts([upstream.host()])
        .mirror(upstream.host(), mirror)
        .build()
        .await
        .unwrap()
}

/// Blob GETs per path in the registry's access log.
fn blob_gets(r: &Registry) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for q in r.sync_requests() {
        if q.is_blob_get() && q.status == 200 {
            let path = q.path.split('?').next().unwrap_or_default().to_owned();
            *m.entry(path).or_default() += 1;
        }
    }
    m
}

/// Waits (with a deadline) until the pull-through mirror holds every blob it
/// has served: distribution 2.8 stores a proxied blob in the background,
/// after answering, so an origin stopped right after a pull could leave it
/// without the blob.
async fn settled(mirror: &Registry) {
    let digests: Vec<String> = mirror
        .sync_requests()
        .iter()
        .filter(|q| q.is_blob_get() && q.status == 200)
        .filter_map(|q| {
            let path = q.path.split('?').next()?;
            Some(path.rsplit('/').next()?.to_owned())
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !digests.iter().all(|d| mirror.blob_data_path(d).exists()) {
        assert!(
            Instant::now() < deadline,
            "the mirror never stored {digests:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_nodes_pull_twenty_modules_through_one_mirror() {
    const NODES: usize = 50;
    const MODULES: usize = 20;
    let (upstream, mirror) = pair();
    let mut modules = Vec::new();
    for i in 0..MODULES {
        let module = sample_module(32_000 + i * 1_000, 100 + i as u64);
        let repo = format!("fleet/m{i}");
        // Both layouts: raw Wasm layers (the sink's own hash checks them
        // from the upstream, ours from a mirror) and tar+gzip layers.
        let pushed = if i % 2 == 0 {
            push_solo_artifact(&upstream, &repo, "v1", &module).await
        } else {
            push_oci_image(&upstream, &repo, "v1", &module).await
        };
        modules.push((pushed, module));
    }
    let modules = Arc::new(modules);
    let upstream_before = upstream.sync_requests().len();
    let mirror_at = mirror_url(&mirror);
    let started = Instant::now();
    // A rollout: one canary node first, then the other 49 at once. (With
    // every node cold at the same instant, distribution 2.8's proxy sends
    // requests for a blob it is still fetching straight to the origin, so
    // a blob can be fetched a few times: measured in ARCHITECTURE.md.)
    let pull_all = |n: usize| {
        let modules = Arc::clone(&modules);
        let host = upstream.host();
        let mirror_at = mirror_at.clone();
        async move {
            let dir = tempfile::tempdir().unwrap();
            let cache = Cache::builder(dir.path())
                .background_purge(false)
                .insecure_hosts([host.clone()])
                .mirror(host, mirror_at)
                .build()
                .await
                .unwrap();
            let mut verified = 0;
            // Each node its own order, as nodes start pods at random.
            for k in 0..MODULES {
                let (pushed, module) = &modules[(k + n) % MODULES];
                let got = cache.get_detailed(&req(&pushed.url, "1")).await.unwrap();
                assert_module_at(&got.path, module);
                assert!(!got.cached);
                verified += 1;
            }
            cache.shutdown().await.unwrap();
            drop(dir);
            verified
        }
    };
    let mut verified = pull_all(0).await;
    // distribution 2.8 stores a blob it proxies in the background (and
    // fetches it a second time from the origin to do so): wait, with a
    // deadline, until it holds every layer.
    let stored_by = Instant::now() + Duration::from_secs(20);
    while !modules
        .iter()
        .all(|(p, _)| mirror.blob_data_path(&p.layer_digest).exists())
    {
        assert!(
            Instant::now() < stored_by,
            "the mirror never stored the layers"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after_canary = blob_gets(&upstream);
    let mut tasks = Vec::new();
    for n in 1..NODES {
        tasks.push(tokio::spawn(pull_all(n)));
    }
    for t in tasks {
        verified += t.await.unwrap();
    }
    let took = started.elapsed();
    assert_eq!(verified, NODES * MODULES);

    // The origin saw each module's layer fetched for the canary only (once
    // to serve it, once more by distribution 2.8 to store it); the other
    // 49 nodes were served from the mirror's storage.
    let all = upstream.sync_requests();
    let origin = &all[upstream_before..];
    let per_blob = blob_gets(&upstream);
    let manifest_reads = origin.iter().filter(|q| q.is_manifest_read()).count();
    let pings = origin.iter().filter(|q| q.path == "/v2/").count();
    eprintln!(
        "mirror tier: {NODES} nodes x {MODULES} modules = {verified} verified pulls in {:.2} s; \
         origin: {} requests ({:.2} per node): {} blob GETs, {} manifest reads (the mirror checks each tag), \
         {} GET /v2/ (the mirror's auth pings), {} other",
        took.as_secs_f64(),
        origin.len(),
        origin.len() as f64 / NODES as f64,
        per_blob.values().sum::<usize>(),
        manifest_reads,
        pings,
        origin.len() - per_blob.values().sum::<usize>() - manifest_reads - pings,
    );
    for (pushed, _) in modules.iter() {
        let repo_path = pushed
            .url
            .trim_start_matches(&format!("oci://{}", upstream.host()))
            .split(':')
            .next()
            .unwrap()
            .to_owned();
        let path = format!("/v2{repo_path}/blobs/{}", pushed.layer_digest);
        let n = per_blob.get(&path).copied().unwrap_or(0);
        assert!(
            (1..=2).contains(&n),
            "{path} fetched from the origin {n} times"
        );
    }
    assert_eq!(
        per_blob, after_canary,
        "the 49 nodes after the canary fetched no blob from the origin"
    );
    // Every request reached the mirror with the upstream's repository path
    // and `ns=<registry>`; none of ours went to the origin directly.
    let ns = format!("ns={}", upstream.host().replace(':', "%3A"));
    let ours: Vec<_> = mirror
        .sync_requests()
        .into_iter()
        .filter(|q| q.path.starts_with("/v2/fleet/"))
        .collect();
    assert!(ours.len() >= NODES * MODULES * 2, "{}", ours.len());
    assert!(ours.iter().all(|q| q.path.contains(&ns)), "{ours:?}");
    assert!(
        origin
            .iter()
            .all(|q| !q.path.contains("ns=") && q.path.starts_with("/v2/")),
        "{origin:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_that_is_down_falls_back_to_the_upstream_within_the_deadline() {
    let (upstream, mirror) = pair();
    let module = sample_module(20_000, 7);
    let pushed = push_oci_image(&upstream, "org/down", "v1", &module).await;
    let dead = mirror_url(&mirror);
    drop(mirror); // the process is killed: its port refuses connections
    let dir = tempfile::tempdir().unwrap();
    let cache = node(dir.path(), &upstream, &dead).await;
    let timeout = Duration::from_secs(10);
    for url in [&pushed.url, &pushed.digest_url] {
        let started = Instant::now();
        let got = cache
            .get_detailed(&req(url, "1").timeout(timeout))
            .await
            .unwrap();
        assert!(started.elapsed() < timeout, "{:?}", started.elapsed());
        assert_module_at(&got.path, &module);
    }
    assert_eq!(
        blob_gets(&upstream).values().sum::<usize>(),
        1,
        "the upstream served the layer"
    );
    cache.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_answering_404_or_503_falls_back_in_order() {
    let upstream = Registry::start(RegistryKind::Plain);
    let module = sample_module(20_000, 8);
    let pushed = push_solo_artifact(&upstream, "org/fallback", "v1", &module).await;
    // A plain registry that does not hold the repository: 404 everywhere.
    let empty = Registry::start(RegistryKind::Plain);
    // A broken mirror: 503 for everything it is asked.
    let broken = TestServer::start(ServerOptions::plain());
    let manifest_path = "/v2/org/fallback/manifests/v1";
    let blob_path = format!("/v2/org/fallback/blobs/{}", pushed.layer_digest);
    broken.route(manifest_path, Route::Status(503));
    broken.route(&blob_path, Route::Status(503));
    let dir = tempfile::tempdir().unwrap();
    let cache = builder(dir.path(), &clock())
        .insecure_hosts([upstream.host()])
        .mirror(upstream.host(), broken.url(""))
        .mirror(upstream.host(), mirror_url(&empty))
        .build()
        .await
        .unwrap();
    let got = cache.get_detailed(&req(&pushed.url, "1")).await.unwrap();
    assert_module_at(&got.path, &module);
    // Asked in order: the broken one (once, no retries: the next source is
    // the retry), then the empty one, then the upstream.
    assert_eq!(broken.hits(manifest_path), 1);
    let seen = broken.requests(manifest_path);
    let query = seen[0].uri.query().unwrap_or_default().to_owned();
    assert_eq!(
        query,
        format!("ns={}", upstream.host().replace(':', "%3A")),
        "containerd's ns= parameter"
    );
    assert!(
        empty
            .sync_requests()
            .iter()
            .any(|q| q.path.starts_with("/v2/org/fallback/manifests/v1?ns=") && q.status == 404)
    );
    assert_eq!(blob_gets(&upstream).values().sum::<usize>(), 1);
    cache.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_upstream_gone_the_mirror_serves_digests_and_mirrored_tags() {
    let (upstream, mirror) = pair();
    let module = sample_module(30_000, 9);
    let raw = sample_module(25_000, 10);
    let image = push_oci_image(&upstream, "org/airgap", "v1", &module).await;
    let solo = push_solo_artifact(&upstream, "org/airgap-raw", "v2", &raw).await;
    let mirror_at = mirror_url(&mirror);
    let upstream_host = upstream.host();
    // Warm-up: one node pulls through the mirror.
    {
        let dir = tempfile::tempdir().unwrap();
        let cache = node(dir.path(), &upstream, &mirror_at).await;
        for p in [&image, &solo] {
            cache.get(&req(&p.url, "1")).await.unwrap();
        }
        cache.shutdown().await.unwrap();
    }
    settled(&mirror).await;
    drop(upstream); // air-gapped from now on
    let dir = tempfile::tempdir().unwrap();
    let cache = builder(dir.path(), &clock())
        .insecure_hosts([upstream_host.clone()])
        .mirror(upstream_host.clone(), mirror_at)
        .build()
        .await
        .unwrap();
    for (p, m) in [(&image, &module), (&solo, &raw)] {
        let by_tag = cache.get_detailed(&req(&p.url, "1")).await.unwrap();
        assert_module_at(&by_tag.path, m);
        assert_eq!(
            by_tag.manifest_digest.map(|d| d.to_prefixed()),
            Some(p.manifest_digest.clone())
        );
    }
    // By digest, in a fresh node.
    let dir2 = tempfile::tempdir().unwrap();
    let cache2 = builder(dir2.path(), &clock())
        .insecure_hosts([upstream_host.clone()])
        .mirror(upstream_host.clone(), mirror_url(&mirror))
        .build()
        .await
        .unwrap();
    for (p, m) in [(&image, &module), (&solo, &raw)] {
        let by_digest = cache2.get(&req(&p.digest_url, "1")).await.unwrap();
        assert_module_at(&by_digest, m);
    }
    cache.shutdown().await.unwrap();
    cache2.shutdown().await.unwrap();
}

/// A fault server acting as a mirror: the right manifest, the wrong layer
/// bytes (same length) for the layer's digest.
fn lying_mirror(pushed: &Pushed, repo: &str, tag: &str, wrong: Vec<u8>) -> (TestServer, String) {
    let s = TestServer::start(ServerOptions::plain());
    let manifest = Route::bytes(pushed.manifest.clone()).with_header(
        "content-type",
        serde_json::from_slice::<serde_json::Value>(&pushed.manifest).unwrap()["mediaType"]
            .as_str()
            .unwrap_or("application/vnd.oci.image.manifest.v1+json"),
    );
    s.route(&format!("/v2/{repo}/manifests/{tag}"), manifest.clone());
    s.route(
        &format!("/v2/{repo}/manifests/{}", pushed.manifest_digest),
        manifest,
    );
    let blob = format!("/v2/{repo}/blobs/{}", pushed.layer_digest);
    s.route(&blob, Route::bytes(wrong));
    (s, blob)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_bytes_from_a_mirror_are_rejected_and_the_next_source_serves() {
    let (upstream, mirror) = pair();
    let raw = sample_module(40_000, 11);
    let boxed = sample_module(40_000, 12);
    let solo = push_solo_artifact(&upstream, "org/lie-raw", "v1", &raw).await;
    let image = push_oci_image(&upstream, "org/lie-tgz", "v1", &boxed).await;
    for (p, module, repo) in [
        (&solo, &raw, "org/lie-raw"),
        (&image, &boxed, "org/lie-tgz"),
    ] {
        // Same length, one byte changed: a raw layer still starts with the
        // Wasm magic, so bytes reach the sink before the digest fails.
        let layer_len = {
            let v: serde_json::Value = serde_json::from_slice(&p.manifest).unwrap();
            let layers = v["layers"].as_array().unwrap();
            layers
                .iter()
                .find(|l| l["digest"] == p.layer_digest.as_str())
                .unwrap()["size"]
                .as_u64()
                .unwrap() as usize
        };
        let mut wrong = if p.layer_digest == solo.layer_digest {
            module.clone()
        } else {
            wasm_cache_testkit::modules::plugin_tar_gz(module)
        };
        assert_eq!(wrong.len(), layer_len);
        let mid = wrong.len() / 2;
        wrong[mid] ^= 0x55;
        let (liar, blob_path) = lying_mirror(p, repo, "v1", wrong);
        for (second, url) in [(true, &p.url), (false, &p.digest_url)] {
            let dir = tempfile::tempdir().unwrap();
            // The liar first; then (first round) the honest pull-through
            // mirror, or (second round) only the upstream.
            let mut b = builder(dir.path(), &clock())
                .insecure_hosts([upstream.host()])
                .mirror(upstream.host(), liar.url(""));
            if second {
                b = b.mirror(upstream.host(), mirror_url(&mirror));
            }
            let cache = b.build().await.unwrap();
            let before = liar.hits(&blob_path);
            let got = cache.get_detailed(&req(url, "1")).await.unwrap();
            assert_module_at(&got.path, module);
            assert_eq!(
                liar.hits(&blob_path),
                before + 1,
                "the lying mirror was asked"
            );
            // Nothing but the right module in the directory.
            assert_eq!(
                module_files(dir.path()),
                [format!(
                    "{}.wasm",
                    wasm_cache_testkit::modules::sha256_hex(module)
                )]
            );
            cache.shutdown().await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_with_credentials_is_asked_with_its_own() {
    let upstream = Registry::start(RegistryKind::Plain);
    let private = Registry::start(RegistryKind::BasicAuth);
    let module = sample_module(20_000, 13);
    let pushed = push_solo_artifact(&upstream, "org/auth", "v1", &module).await;
    // The "mirror" holds the same content behind basic auth.
    push_solo_artifact(&private, "org/auth", "v1", &module).await;
    let (user, password) = private.credentials().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cache = builder(dir.path(), &clock())
        .insecure_hosts([upstream.host()])
        .mirror_with(
            upstream.host(),
            Mirror::new(mirror_url(&private)).credentials(user, password),
        )
        .build()
        .await
        .unwrap();
    let got = cache.get_detailed(&req(&pushed.url, "1")).await.unwrap();
    assert_module_at(&got.path, &module);
    assert_eq!(blob_gets(&upstream).values().sum::<usize>(), 0);
    assert_eq!(blob_gets(&private).values().sum::<usize>(), 1);
    assert!(!format!("{cache:?}").contains(password));
    cache.shutdown().await.unwrap();
    // Without them the mirror answers 401 and the upstream serves.
    let dir = tempfile::tempdir().unwrap();
    let cache = node(dir.path(), &upstream, &mirror_url(&private)).await;
    let got = cache.get_detailed(&req(&pushed.url, "1")).await.unwrap();
    assert_module_at(&got.path, &module);
    assert_eq!(blob_gets(&upstream).values().sum::<usize>(), 1);
    cache.shutdown().await.unwrap();
}

#[test]
fn fetches_are_counted_by_source() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let (upstream, mirror) = pair();
    let a = sample_module(10_000, 14);
    let b = sample_module(10_000, 15);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (pa, pb) = rt.block_on(async {
        (
            push_solo_artifact(&upstream, "org/count-a", "v1", &a).await,
            push_solo_artifact(&upstream, "org/count-b", "v1", &b).await,
        )
    });
    let dir = tempfile::tempdir().unwrap();
    let mirror_at = mirror_url(&mirror);
    metrics::with_local_recorder(&recorder, || {
        rt.block_on(async {
            let cache = node(dir.path(), &upstream, &mirror_at).await;
            cache.get(&req(&pa.url, "1")).await.unwrap();
            cache.shutdown().await.unwrap();
        });
    });
    drop(mirror);
    let dir2 = tempfile::tempdir().unwrap();
    metrics::with_local_recorder(&recorder, || {
        rt.block_on(async {
            let cache = node(dir2.path(), &upstream, &mirror_at).await;
            cache.get(&req(&pb.url, "1")).await.unwrap();
            cache.shutdown().await.unwrap();
        });
    });
    let mut seen = HashMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let k = key.key();
        if k.name() != "wasm_remote_fetch_count" {
            continue;
        }
        let labels: Vec<String> = k
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        if let DebugValue::Counter(n) = value {
            seen.insert(labels.join(","), n);
        }
    }
    assert_eq!(
        seen.get("result=success,source=mirror"),
        Some(&1),
        "{seen:?}"
    );
    assert_eq!(
        seen.get("result=success,source=upstream"),
        Some(&1),
        "{seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_come_through_the_mirror_and_still_verify() {
    use wasm_cache::TrustPolicy;
    use wasm_cache_testkit::cosign;
    let (upstream, mirror) = pair();
    let key = cosign::generate_p256();
    let other = cosign::generate_p256();
    let policy = |k: &cosign::SigningKey| TrustPolicy::new([k.public_key()]).unwrap();
    let module = sample_module(15_000, 16);
    let pushed = push_solo_artifact(&upstream, "org/signed", "v1", &module).await;
    cosign::sign_image(&upstream, "org/signed", &pushed.manifest_digest, &key).await;
    let host = upstream.host();
    let mirror_at = mirror_url(&mirror);
    // Warm-up under the policy: the signature manifest and payload are asked
    // of the mirror, which pulls them through.
    {
        let dir = tempfile::tempdir().unwrap();
        let cache = node(dir.path(), &upstream, &mirror_at).await;
        let path = cache
            .get(&req(&pushed.url, "1").verify_with(policy(&key)))
            .await
            .unwrap();
        assert_module_at(&path, &module);
        cache.shutdown().await.unwrap();
    }
    assert!(
        mirror
            .sync_requests()
            .iter()
            .any(|q| q.path.contains("/manifests/sha256-") && q.status == 200),
        "the signature manifest came through the mirror"
    );
    settled(&mirror).await;
    drop(upstream);
    // Air-gapped: verified from the mirror alone; another key still fails.
    let dir = tempfile::tempdir().unwrap();
    let cache = builder(dir.path(), &clock())
        .insecure_hosts([host.clone()])
        .mirror(host.clone(), mirror_at.clone())
        .build()
        .await
        .unwrap();
    let e = cache
        .get(&req(&pushed.url, "1").verify_with(policy(&other)))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("no valid signature"), "{e}");
    assert!(module_files(dir.path()).is_empty());
    let path = cache
        .get(&req(&pushed.url, "1").verify_with(policy(&key)))
        .await
        .unwrap();
    assert_module_at(&path, &module);
    cache.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_mirror_leaves_the_upstream_half_the_deadline() {
    let upstream = Registry::start(RegistryKind::Plain);
    let module = sample_module(20_000, 17);
    let pushed = push_solo_artifact(&upstream, "org/hung", "v1", &module).await;
    // Accepts the connection, then answers nothing for far longer than the timeout.
    let hung = TestServer::start(ServerOptions::plain());
    let manifest_path = "/v2/org/hung/manifests/v1";
    hung.route(
        manifest_path,
        Route::delayed(Duration::from_secs(120), Route::Status(200)),
    );
    let dir = tempfile::tempdir().unwrap();
    let cache = node(dir.path(), &upstream, &hung.url("")).await;
    let timeout = Duration::from_secs(6);
    let started = Instant::now();
    let got = cache
        .get_detailed(&req(&pushed.url, "1").timeout(timeout))
        .await
        .unwrap();
    let took = started.elapsed();
    assert_module_at(&got.path, &module);
    assert_eq!(hung.hits(manifest_path), 1);
    assert!(
        took >= Duration::from_secs(2) && took < timeout,
        "the mirror had half the time, the upstream the rest: {took:?}"
    );
    cache.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_mirror_uses_its_own_ca_or_insecure_through_the_same_transport() {
    let upstream = Registry::start(RegistryKind::Plain);
    // A TLS registry holding the same module stands in for an https mirror;
    // its certificate is issued by a test CA nobody trusts by default.
    let tls = Registry::start(RegistryKind::Tls);
    let module = sample_module(20_000, 18);
    let pushed = push_solo_artifact(&upstream, "org/tls", "v1", &module).await;
    push_solo_artifact(&tls, "org/tls", "v1", &module).await;
    let https = format!("https://{}", tls.host());
    let ca = tls.ca_pem().unwrap().as_bytes().to_vec();
    let mut served_by_mirror = 0;
    for (mirror, from_mirror) in [
        (Mirror::new(&https).ca_pem(ca.clone()), true),
        (Mirror::new(&https).insecure(true), true),
        // Unverifiable certificate: refused, the upstream serves.
        (Mirror::new(&https), false),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let cache = builder(dir.path(), &clock())
            .insecure_hosts([upstream.host()])
            .mirror_with(upstream.host(), mirror)
            .build()
            .await
            .unwrap();
        let before = blob_gets(&tls).values().sum::<usize>();
        let got = cache.get_detailed(&req(&pushed.url, "1")).await.unwrap();
        assert_module_at(&got.path, &module);
        let after = blob_gets(&tls).values().sum::<usize>();
        assert_eq!(after > before, from_mirror);
        served_by_mirror += usize::from(after > before);
        cache.shutdown().await.unwrap();
    }
    assert_eq!(served_by_mirror, 2);
    // The mirror's CA is the mirror's only: the same registry asked
    // directly (not as a mirror) is still unverifiable.
    let dir = tempfile::tempdir().unwrap();
    let cache = builder(dir.path(), &clock())
        .mirror_with(upstream.host(), Mirror::new(&https).ca_pem(ca))
        .build()
        .await
        .unwrap();
    let direct = cache
        .get(&req(&format!("oci://{}/org/tls:v1", tls.host()), "1"))
        .await
        .unwrap_err();
    assert!(
        direct.to_string().to_lowercase().contains("certificate")
            || direct.to_string().contains("TLS"),
        "{direct}"
    );
    cache.shutdown().await.unwrap();
}
