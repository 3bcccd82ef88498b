//! The OCI fetcher against a real registry (`docker-registry`, CNCF distribution)
//! on 127.0.0.1, started by `wasm_cache_testkit::registry` for each test.

use std::time::{Duration, Instant};

use oci_client::Reference;
use wasm_cache_conformance::{Fixture, run_all};
use wasm_cache_core::retry::Backoff;
use wasm_cache_core::{
    Error, ErrorKind, FetchRequest, Fetcher, ModuleUrl, PullSecret, Sha256Digest,
};
use wasm_cache_testkit::images::{self, Platform, Pushed};
use wasm_cache_testkit::modules::{gzip, sample_module, tar};
use wasm_cache_testkit::registry::{self, Registry, RegistryKind};
use wasm_fetch_oci::OciFetcher;

const TIMEOUT: Duration = Duration::from_secs(30);

fn quick_backoff() -> Backoff {
    Backoff::default()
        .with_max_attempts(3)
        .with_initial(Duration::from_millis(20))
        .with_max_interval(Duration::from_millis(100))
}

/// A fetcher that reaches `registry`: insecure-listed for plain HTTP ones,
/// trusting the test CA for TLS ones; never the machine's docker config.
fn fetcher_for(registry: &Registry) -> OciFetcher {
    let b = OciFetcher::builder()
        .docker_config_dir(None)
        .backoff(quick_backoff());
    let b = match registry.ca_pem() {
        Some(pem) => b.ca_pem(pem.as_bytes().to_vec()),
        None => b.insecure_hosts([registry.host()]),
    };
    b.build().unwrap()
}

fn request(url: &str) -> FetchRequest {
    FetchRequest::new(ModuleUrl::parse(url).unwrap(), Instant::now() + TIMEOUT)
}

fn digest(s: &str) -> Sha256Digest {
    Sha256Digest::parse(s).unwrap()
}

async fn fetch(
    f: &OciFetcher,
    req: &FetchRequest,
) -> Result<(Vec<u8>, Option<Sha256Digest>), Error> {
    let mut sink = Vec::new();
    let got = f.fetch(req, &mut sink).await?;
    assert_eq!(got.size, sink.len() as u64);
    Ok((sink, got.digest))
}

/// The `Docker-Content-Digest` the registry reports for `repo:reference` (HEAD).
async fn header_digest(registry: &Registry, repo: &str, reference: &str) -> String {
    let client = registry.client();
    let r = Reference::with_tag(registry.host(), repo.to_owned(), reference.to_owned());
    client
        .fetch_manifest_digest(&r, &registry.push_auth())
        .await
        .unwrap()
}

#[tokio::test]
async fn every_layout_pulls_the_exact_module() {
    let registry = Registry::start(RegistryKind::Plain);
    let f = fetcher_for(&registry);
    let cases: Vec<(&str, Pushed, Vec<u8>)> = vec![
        {
            let m = sample_module(70_000, 1);
            (
                "docker",
                images::push_docker_image(&registry, "l/docker", "v1", &m).await,
                m,
            )
        },
        {
            let m = sample_module(50_000, 2);
            (
                "oci",
                images::push_oci_image(&registry, "l/oci", "v1", &m).await,
                m,
            )
        },
        {
            let m = sample_module(40_000, 3);
            (
                "solo",
                images::push_solo_artifact(&registry, "l/solo", "v1", &m).await,
                m,
            )
        },
        {
            let m = sample_module(30_000, 4);
            (
                "cncf",
                images::push_cncf_artifact(&registry, "l/cncf", "v1", &m).await,
                m,
            )
        },
    ];
    for (name, pushed, module) in cases {
        let repo = format!("l/{name}");
        assert_eq!(
            header_digest(&registry, &repo, "v1").await,
            pushed.manifest_digest,
            "{name}"
        );
        let want = digest(&pushed.manifest_digest);
        let req = request(&pushed.url);
        assert_eq!(f.resolve(&req).await.unwrap(), Some(want), "{name}");
        // By tag, and by the resolved digest, as the cache does.
        for r in [req.clone(), req.clone().with_digest(Some(want))] {
            let (bytes, got) = fetch(&f, &r)
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(
                bytes == module,
                "{name}: wrong bytes ({} vs {})",
                bytes.len(),
                module.len()
            );
            assert_eq!(got, Some(want), "{name}");
        }
        // The whole Fetcher contract, with the manifest digest as the checksum.
        let fixture =
            Fixture::new(ModuleUrl::parse(&pushed.url).unwrap(), module).with_digest(want);
        run_all(&f, &fixture)
            .await
            .unwrap_or_else(|v| panic!("{name}: {v}"));
    }
}

#[tokio::test]
async fn digest_pins_of_manifests_and_indexes() {
    let registry = Registry::start(RegistryKind::Plain);
    let f = fetcher_for(&registry);
    let wasm = sample_module(20_000, 10);
    let linux = sample_module(20_000, 11);
    let index = images::push_index(
        &registry,
        "p/multi",
        "v1",
        &[(Platform::LINUX_AMD64, &linux), (Platform::WASIP1, &wasm)],
    )
    .await;
    let want = digest(&index.manifest_digest);
    assert_eq!(
        header_digest(&registry, "p/multi", "v1").await,
        index.manifest_digest
    );
    // The checksum of an index is the index's digest, and the wasm entry wins.
    assert_eq!(f.resolve(&request(&index.url)).await.unwrap(), Some(want));
    for url in [&index.url, &index.digest_url] {
        let (bytes, got) = fetch(&f, &request(url)).await.unwrap();
        assert!(bytes == wasm, "{url}: not the wasm entry");
        assert_eq!(got, Some(want));
    }
    assert_eq!(
        f.resolve(&request(&index.digest_url)).await.unwrap(),
        Some(want)
    );

    // Without a wasm entry, linux/amd64 is taken.
    let fallback = images::push_index(
        &registry,
        "p/linux",
        "v1",
        &[
            (Platform::LINUX_ARM64, &wasm),
            (Platform::LINUX_AMD64, &linux),
        ],
    )
    .await;
    assert!(fetch(&f, &request(&fallback.url)).await.unwrap().0 == linux);
    let none =
        images::push_index(&registry, "p/none", "v1", &[(Platform::LINUX_ARM64, &wasm)]).await;
    let e = fetch(&f, &request(&none.url)).await.unwrap_err();
    assert!(e.to_string().contains("linux/arm64"), "{e}");

    // A plain manifest pinned by digest.
    let image = images::push_oci_image(&registry, "p/image", "v1", &wasm).await;
    let (bytes, got) = fetch(&f, &request(&image.digest_url)).await.unwrap();
    assert!(bytes == wasm);
    assert_eq!(got, Some(digest(&image.manifest_digest)));

    // A digest the repository does not have: in the URL, and in the request.
    let other = format!("sha256:{}", "ab".repeat(32));
    let wrong = registry.url(&format!("p/image@{other}"));
    for e in [
        f.resolve(&request(&wrong)).await.unwrap_err(),
        fetch(&f, &request(&wrong)).await.unwrap_err(),
        fetch(&f, &request(&image.url).with_digest(Some(digest(&other))))
            .await
            .unwrap_err(),
    ] {
        assert!(
            matches!(e.kind(), ErrorKind::NotFound | ErrorKind::Manifest),
            "{e}"
        );
    }
}

#[tokio::test]
async fn invalid_layouts_and_missing_tags() {
    let registry = Registry::start(RegistryKind::Plain);
    let f = fetcher_for(&registry);
    let layer = tar(&[("plugin.wasm", &sample_module(100, 1))]);
    let config = br#"{"architecture":"amd64","os":"linux"}"#;
    images::push_blob(&registry, "bad/layout", config).await;
    images::push_blob(&registry, "bad/layout", &layer).await;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": images::OCI_MANIFEST,
        "config": {"mediaType": images::OCI_CONFIG, "digest": images::digest_of(config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": images::digest_of(&layer), "size": layer.len()}],
    });
    images::push_manifest_json(
        &registry,
        "bad/layout",
        "v1",
        images::OCI_MANIFEST,
        &serde_json::to_vec(&manifest).unwrap(),
    )
    .await;
    let e = fetch(&f, &request(&registry.url("bad/layout:v1")))
        .await
        .unwrap_err();
    let Error::InvalidLayout { reasons, .. } = &e else {
        panic!("expected InvalidLayout, got {e}")
    };
    assert_eq!(reasons.len(), 4, "{e}");
    for layout in ["docker image", "oci image", "istio/solo", "cncf"] {
        assert!(e.to_string().contains(layout), "{e}");
    }

    let missing = registry.url("bad/layout:nope");
    for e in [
        f.resolve(&request(&missing)).await.unwrap_err(),
        fetch(&f, &request(&missing)).await.unwrap_err(),
        fetch(&f, &request(&registry.url("no/such-repo:v1")))
            .await
            .unwrap_err(),
    ] {
        assert!(matches!(e, Error::NotFound { .. }), "{e}");
    }
}

#[tokio::test]
async fn resolve_downloads_no_layer() {
    let registry = Registry::start(RegistryKind::Plain);
    let f = fetcher_for(&registry);
    let pushed = images::push_oci_image(&registry, "r/quiet", "v1", &sample_module(9000, 5)).await;
    let before = registry.sync_requests().len();
    let d = f.resolve(&request(&pushed.url)).await.unwrap();
    let during: Vec<_> = registry.sync_requests().split_off(before);
    assert!(during.iter().any(|r| r.is_manifest_read()), "{during:?}");
    assert!(
        !during.iter().any(|r| r.path.contains("/blobs/")),
        "{during:?}"
    );

    let before = registry.sync_requests().len();
    fetch(&f, &request(&pushed.url).with_digest(d))
        .await
        .unwrap();
    let during = registry.requests_since(before, |r| !registry::blob_gets(r).is_empty());
    assert_eq!(
        registry::blob_gets(&during),
        [pushed.layer_digest.clone()].into_iter().collect(),
        "fetch downloads exactly the module's layer: {during:?}"
    );
}

#[tokio::test]
async fn corrupted_blobs_are_rejected() {
    let registry = Registry::start(RegistryKind::Plain);
    let f = fetcher_for(&registry);
    // A raw layer (unboxing cannot notice) and a tar.gz layer (it might, first).
    let raw = images::push_solo_artifact(&registry, "c/raw", "v1", &sample_module(30_000, 6)).await;
    let boxed = images::push_oci_image(&registry, "c/boxed", "v1", &sample_module(30_000, 7)).await;
    for pushed in [raw, boxed] {
        registry.corrupt_blob(&pushed.layer_digest);
        let e = fetch(&f, &request(&pushed.url)).await.unwrap_err();
        let Error::DigestMismatch { expected, .. } = &e else {
            panic!("expected DigestMismatch, got {e}")
        };
        assert!(expected.contains(&pushed.layer_digest), "{e}");
    }
}

#[tokio::test]
async fn gzip_and_size_bounds() {
    let registry = Registry::start(RegistryKind::Plain);
    let f = fetcher_for(&registry);
    let module = sample_module(10_000, 8);
    // A gzip bomb in an image layer: small on the wire, huge unpacked.
    let bomb = gzip(&tar(&[(
        "plugin.wasm",
        &[&module[..], &vec![0u8; 4 << 20]].concat(),
    )]));
    let pushed = images::push_oci_image_with_layer(&registry, "s/bomb", "v1", &bomb).await;
    let req = request(&pushed.url).with_max_size(1 << 20);
    let e = fetch(&f, &req).await.unwrap_err();
    assert!(
        matches!(e, Error::TooLarge { limit, .. } if limit == 1 << 20),
        "{e}"
    );
    // A raw layer larger than the limit is refused before it is downloaded.
    let big =
        images::push_cncf_artifact(&registry, "s/big", "v1", &sample_module(200_000, 9)).await;
    let before = registry.sync_requests().len();
    let e = fetch(&f, &request(&big.url).with_max_size(100_000))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::TooLarge { .. }), "{e}");
    let during = registry.sync_requests().split_off(before);
    assert!(registry::blob_gets(&during).is_empty(), "{during:?}");
}

#[tokio::test]
async fn basic_auth_with_pull_secrets() {
    let registry = Registry::start(RegistryKind::BasicAuth);
    let module = sample_module(12_000, 12);
    let pushed = images::push_oci_image(&registry, "a/private", "v1", &module).await;
    let f = fetcher_for(&registry);
    let req = request(&pushed.url);

    let e = fetch(&f, &req).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unauthorized, "{e}");

    let secret = PullSecret::new(registry.docker_config_json());
    let with = req.clone().with_pull_secret(Some(secret));
    assert_eq!(
        f.resolve(&with).await.unwrap(),
        Some(digest(&pushed.manifest_digest))
    );
    assert!(fetch(&f, &with).await.unwrap().0 == module);

    // A wrong password: same registry, rotated secret, new client.
    let (user, password) = registry.credentials().unwrap();
    let wrong = registry::docker_config_json(&registry.host(), user, "not-the-password");
    let e = fetch(
        &f,
        &req.clone().with_pull_secret(Some(PullSecret::new(wrong))),
    )
    .await
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unauthorized, "{e}");

    // `username`/`password` and `https://host/` keys work too.
    let alt = serde_json::to_vec(&serde_json::json!({"auths": {
        format!("https://{}/", registry.host()): {"username": user, "password": password}
    }}))
    .unwrap();
    assert!(
        fetch(
            &f,
            &req.clone().with_pull_secret(Some(PullSecret::new(alt)))
        )
        .await
        .is_ok()
    );

    // Credential helpers named in a secret are ignored (never run): anonymous.
    let helpers = br#"{"credsStore":"desktop","credHelpers":{"127.0.0.1":"evil"},"auths":{}}"#;
    let e = fetch(
        &f,
        &req.clone()
            .with_pull_secret(Some(PullSecret::new(helpers.to_vec()))),
    )
    .await
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unauthorized, "{e}");

    // Garbage is InvalidPullSecret, without echoing it.
    let garbage = format!("{{\"auths\": {password}");
    let e = fetch(
        &f,
        &req.clone()
            .with_pull_secret(Some(PullSecret::new(garbage.into_bytes()))),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, Error::InvalidPullSecret { .. }), "{e}");

    // The default docker config is used when there is no secret.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        registry.docker_config_json(),
    )
    .unwrap();
    let with_config = OciFetcher::builder()
        .insecure_hosts([registry.host()])
        .docker_config_dir(Some(dir.path().to_path_buf()))
        .build()
        .unwrap();
    assert!(fetch(&with_config, &req).await.unwrap().0 == module);

    // No secret anywhere in what the fetchers print.
    for shown in [
        format!("{f:?}"),
        format!("{with_config:?}"),
        e.to_string(),
        format!("{e:?}"),
    ] {
        assert!(!shown.contains(password), "{shown}");
    }
}

#[tokio::test]
async fn tls_needs_the_ca_or_an_insecure_listing() {
    let registry = Registry::start(RegistryKind::Tls);
    let module = sample_module(15_000, 13);
    let pushed = images::push_docker_image(&registry, "t/tls", "v1", &module).await;
    let req = request(&pushed.url);

    let unknown_ca = OciFetcher::builder()
        .docker_config_dir(None)
        .build()
        .unwrap();
    let e = fetch(&unknown_ca, &req).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Transport, "{e}");
    assert!(
        !matches!(e, Error::DownloadFailed { .. }),
        "certificate errors are not retried: {e}"
    );

    let with_file = OciFetcher::builder()
        .docker_config_dir(None)
        .ca_file(registry.ca_file().unwrap())
        .build()
        .unwrap();
    assert!(fetch(&with_file, &req).await.unwrap().0 == module);

    let insecure = OciFetcher::builder()
        .docker_config_dir(None)
        .insecure_hosts([registry.host()])
        .build()
        .unwrap();
    assert!(fetch(&insecure, &req).await.unwrap().0 == module);
    let everything = OciFetcher::builder()
        .docker_config_dir(None)
        .insecure_hosts(["*"])
        .build()
        .unwrap();
    assert!(fetch(&everything, &req).await.unwrap().0 == module);

    // Listing another registry does not lower the bar for this one.
    let other = OciFetcher::builder()
        .docker_config_dir(None)
        .insecure_hosts(["127.0.0.1:1"])
        .build()
        .unwrap();
    assert_eq!(
        fetch(&other, &req).await.unwrap_err().kind(),
        ErrorKind::Transport
    );
}

#[tokio::test]
async fn bad_builder_inputs_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let not_pem = dir.path().join("ca.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    for b in [
        OciFetcher::builder().ca_file(dir.path().join("missing.pem")),
        OciFetcher::builder().ca_file(&not_pem),
        OciFetcher::builder().insecure_hosts(["http://host:5000/"]),
    ] {
        let e = b.build().unwrap_err();
        assert!(matches!(e, Error::InvalidConfig { .. }), "{e}");
    }
    let f = OciFetcher::builder()
        .docker_config_dir(None)
        .build()
        .unwrap();
    let e = fetch(&f, &request("https://127.0.0.1:1/m.wasm"))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::UnsupportedScheme { .. }), "{e}");
}

#[tokio::test]
async fn unreachable_registries_fail_within_the_deadline() {
    // A closed port: connection refused, retried, then a transport error.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_addr = closed.local_addr().unwrap();
    drop(closed);
    // A blackhole: accepts connections and never answers.
    let blackhole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hole_addr = blackhole.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((c, _)) = blackhole.accept().await {
            conns.push(c);
        }
    });
    let f = OciFetcher::builder()
        .docker_config_dir(None)
        .insecure_hosts([closed_addr.to_string(), hole_addr.to_string()])
        .backoff(quick_backoff())
        .build()
        .unwrap();
    for (addr, kinds) in [
        (closed_addr, [ErrorKind::Transport, ErrorKind::Timeout]),
        (hole_addr, [ErrorKind::Timeout, ErrorKind::Timeout]),
    ] {
        let url = format!("oci://{addr}/x/y:v1");
        let deadline = Instant::now() + Duration::from_secs(2);
        let req = FetchRequest::new(ModuleUrl::parse(&url).unwrap(), deadline);
        // The outer timeout only keeps a broken fetcher from hanging the suite.
        let e = tokio::time::timeout(Duration::from_secs(20), fetch(&f, &req))
            .await
            .expect("the fetcher ignored its deadline")
            .unwrap_err();
        assert!(kinds.contains(&e.kind()), "{url}: {e}");
        let e = tokio::time::timeout(Duration::from_secs(20), f.resolve(&req))
            .await
            .expect("the fetcher ignored its deadline")
            .unwrap_err();
        assert!(kinds.contains(&e.kind()), "{url}: {e}");
    }
    held.abort();
}

/// A fake registry endpoint: answers every request with 401 and `challenge`,
/// and records the request lines it saw.
async fn fake_registry(
    challenge: String,
) -> (
    std::net::SocketAddr,
    tokio::task::JoinHandle<()>,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut c, _)) = listener.accept().await {
            let challenge = challenge.clone();
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let n = c.read(&mut buf).await.unwrap_or(0);
                // The whole request head: the test checks what headers were sent.
                let head = String::from_utf8_lossy(&buf[..n]).into_owned();
                log.lock().unwrap().push(head);
                let body =
                    r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#;
                let resp = format!(
                    "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: {challenge}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = c.write_all(resp.as_bytes()).await;
            });
        }
    });
    (addr, task, seen)
}

#[tokio::test]
async fn hostile_bearer_realms_are_refused() {
    for realm in [
        "http://169.254.169.254/latest/meta-data",
        "http://[fe80::1]/token",
        "http://100.100.100.200/token",
        "file:///etc/passwd",
        "data:text/plain,token",
    ] {
        let (addr, task, seen) = fake_registry(format!(
            r#"Bearer realm="{realm}",service="fake",scope="repository:x/y:pull""#
        ))
        .await;
        let f = OciFetcher::builder()
            .docker_config_dir(None)
            .insecure_hosts([addr.to_string()])
            .allow_private_realms(true)
            .build()
            .unwrap();
        let secret = PullSecret::new(registry::docker_config_json(&addr.to_string(), "u", "p4ss"));
        let req = request(&format!("oci://{addr}/x/y:v1")).with_pull_secret(Some(secret));
        for e in [
            fetch(&f, &req).await.unwrap_err(),
            f.resolve(&req).await.unwrap_err(),
        ] {
            assert!(matches!(e, Error::Blocked { .. }), "{realm}: {e}");
            assert!(e.to_string().contains("realm"), "{e}");
        }
        // Only anonymous registry requests reached the fake registry: the
        // credentials were sent nowhere (the realm was refused before any
        // request to it).
        let heads = seen.lock().unwrap().clone();
        let http: Vec<_> = heads.iter().filter(|l| l.contains(" HTTP/1.")).collect();
        assert!(
            !http.is_empty()
                && http.iter().all(|l| l.starts_with("GET /v2/")
                    && !l.to_ascii_lowercase().contains("\nauthorization:")),
            "{realm}: {heads:?}"
        );
        task.abort();
    }
}

/// The requests a cold pull makes, counted in the registry's access log:
/// resolve then fetch by the resolved digest, as the cache does. `want` is
/// the count the test expects, waited for (the registry may log a request
/// a moment after the client has its response).
async fn cold_pull_requests(
    registry: &Registry,
    url: &str,
    f: &OciFetcher,
    want: usize,
) -> Vec<String> {
    let before = registry.sync_requests().len();
    let req = request(url);
    let d = f.resolve(&req).await.unwrap();
    fetch(f, &req.clone().with_digest(d)).await.unwrap();
    registry
        .requests_since(before, |r| r.len() >= want)
        .into_iter()
        .map(|r| format!("{} {} {}", r.method, r.path, r.status))
        .collect()
}

#[tokio::test]
async fn a_cold_pull_is_two_requests_three_for_an_index() {
    let registry = Registry::start(RegistryKind::Plain);
    let module = sample_module(30_000, 20);
    let image = images::push_cncf_artifact(&registry, "n/raw", "v1", &module).await;
    let boxed = images::push_oci_image(&registry, "n/boxed", "v1", &module).await;
    let index =
        images::push_index(&registry, "n/index", "v1", &[(Platform::WASIP1, &module)]).await;
    for (pushed, want) in [(&image, 2), (&boxed, 2), (&index, 3)] {
        // A fresh fetcher each time: nothing known about the registry yet.
        let seen = cold_pull_requests(&registry, &pushed.url, &fetcher_for(&registry), want).await;
        assert_eq!(seen.len(), want, "{}: {seen:?}", pushed.url);
        assert!(
            seen.iter()
                .all(|r| r.starts_with("GET ") && r.ends_with(" 200")),
            "{seen:?}"
        );
    }
}

#[tokio::test]
async fn token_auth_registry_with_pull_secrets() {
    let registry = Registry::start(RegistryKind::TokenAuth);
    let module = sample_module(25_000, 21);
    let pushed = images::push_oci_image(&registry, "t/private", "v1", &module).await;
    let f = fetcher_for(&registry);
    let req = request(&pushed.url);
    // Anonymous: the token grants nothing, the registry refuses.
    let e = fetch(&f, &req).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unauthorized, "{e}");
    // With the secret: the token flow, then the pull.
    let with = req
        .clone()
        .with_pull_secret(Some(PullSecret::new(registry.docker_config_json())));
    assert_eq!(
        f.resolve(&with).await.unwrap(),
        Some(digest(&pushed.manifest_digest))
    );
    assert!(fetch(&f, &with).await.unwrap().0 == module);
    let tokens = registry.token_server().unwrap().requests();
    assert!(
        tokens.iter().any(|t| t
            .authorization
            .as_deref()
            .is_some_and(|a| a.starts_with("Basic "))
            && t.query.contains("scope=repository%3At%2Fprivate%3Apull")),
        "{tokens:?}"
    );
    // A wrong password: the token service refuses; no secret in the error.
    let (user, password) = registry.credentials().unwrap();
    let wrong = registry::docker_config_json(&registry.host(), user, "not-the-password");
    let e = fetch(
        &f,
        &req.clone().with_pull_secret(Some(PullSecret::new(wrong))),
    )
    .await
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unauthorized, "{e}");
    for shown in [e.to_string(), format!("{e:?}"), format!("{f:?}")] {
        assert!(
            !shown.contains(password) && !shown.contains("not-the-password"),
            "{shown}"
        );
    }
}

#[tokio::test]
async fn a_plain_http_registry_that_is_not_listed_fails_at_once() {
    let registry = Registry::start(RegistryKind::Plain);
    let pushed = images::push_oci_image(&registry, "h/plain", "v1", &sample_module(9000, 22)).await;
    let f = OciFetcher::builder()
        .docker_config_dir(None)
        .backoff(quick_backoff())
        .build()
        .unwrap();
    for e in [
        fetch(&f, &request(&pushed.url)).await.unwrap_err(),
        f.resolve(&request(&pushed.url)).await.unwrap_err(),
    ] {
        assert!(
            e.to_string().ends_with(
                "server gave an HTTP response to an HTTPS request; list it with --insecure-registry"
            ),
            "{e}"
        );
        assert!(!matches!(e, Error::DownloadFailed { .. }), "retried: {e}");
    }
}

/// A TCP forwarder in front of `upstream` that records, per connection, the
/// first bytes the client sent (to tell a TLS handshake from plain HTTP).
async fn recording_forwarder(
    upstream: std::net::SocketAddr,
) -> (
    std::net::SocketAddr,
    tokio::task::JoinHandle<()>,
    std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut first = vec![0u8; 4096];
                let n = client.read(&mut first).await.unwrap_or(0);
                first.truncate(n);
                log.lock().unwrap().push(first.clone());
                let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                if server.write_all(&first).await.is_err() {
                    return;
                }
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    });
    (addr, task, seen)
}

/// Issue 19: an insecure-listed plain-HTTP registry named with its port is
/// pulled over one connection, with no TLS handshake attempted first (the
/// old code tried HTTPS, failed, and opened a second connection in plain
/// HTTP); a TLS registry listed the same way still works, and the plain
/// probe sent to it carries no credentials.
#[tokio::test]
async fn a_plain_insecure_registry_costs_one_connection_and_no_tls_attempt() {
    let registry = Registry::start(RegistryKind::Plain);
    let module = sample_module(20_000, 31);
    images::push_cncf_artifact(&registry, "p/one", "v1", &module).await;
    let (addr, task, seen) = recording_forwarder(registry.addr()).await;
    let f = OciFetcher::builder()
        .docker_config_dir(None)
        .insecure_hosts([addr.to_string()])
        .build()
        .unwrap();
    let req = request(&format!("oci://{addr}/p/one:v1"));
    assert!(fetch(&f, &req).await.unwrap().0 == module);
    let firsts = seen.lock().unwrap().clone();
    assert_eq!(firsts.len(), 1, "one connection for manifest and blob");
    assert!(firsts[0].starts_with(b"GET /v2/p/one/manifests/v1 HTTP/1.1"));
    task.abort();

    // A TLS registry, insecure-listed by host:port: the plain probe gets a
    // 400 (or nothing), then HTTPS works; the probe carried no credentials.
    let tls = Registry::start(RegistryKind::Tls);
    let module = sample_module(20_000, 32);
    images::push_cncf_artifact(&tls, "p/two", "v1", &module).await;
    let (addr, task, seen) = recording_forwarder(tls.addr()).await;
    let f = OciFetcher::builder()
        .docker_config_dir(None)
        .insecure_hosts([addr.to_string()])
        .build()
        .unwrap();
    // A registry token is sent up front (as `Authorization: Bearer`) once
    // the scheme is known; never on the plain probe.
    let secret = PullSecret::new(
        format!(r#"{{"auths":{{"{addr}":{{"registrytoken":"s3cret"}}}}}}"#).into_bytes(),
    );
    let req = request(&format!("oci://{addr}/p/two:v1")).with_pull_secret(Some(secret));
    assert!(fetch(&f, &req).await.unwrap().0 == module);
    let firsts = seen.lock().unwrap().clone();
    let plain: Vec<_> = firsts.iter().filter(|f| f.starts_with(b"GET ")).collect();
    assert_eq!(plain.len(), 1, "one plain probe");
    let head = String::from_utf8_lossy(plain[0]).to_lowercase();
    assert!(
        !head.contains("authorization") && !head.contains("s3cret"),
        "{head}"
    );
    assert!(
        firsts.iter().any(|f| f.first() == Some(&0x16)),
        "then a TLS handshake"
    );
    task.abort();
}
