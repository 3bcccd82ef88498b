//! The composed cache against broken and malicious OCI registries, and hostile
//! pull secrets: a real `docker-registry` (down, or serving a blob that does
//! not match its digest), and a fake registry on the testkit's loopback server
//! for what a real registry refuses to serve (a manifest that is not JSON, a
//! 1 GiB layer, a token realm at a metadata address). Every case ends in a
//! clear error within its deadline and loses nothing.

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::Duration;

use common::{HANG_SLACK, assert_no_secret, assert_store_consistent, cli, module_files, within};
use wasm_cache::{Cache, ErrorKind, GetRequest, PullPolicy, PullSecret};
use wasm_cache_testkit::http::{Route, ServerOptions, TestServer};
use wasm_cache_testkit::images::{
    OCI_INDEX, OCI_LAYER_GZIP, OCI_MANIFEST, digest_of, push_cncf_artifact, push_oci_image,
};
use wasm_cache_testkit::modules::{plugin_tar_gz, sample_module, sha256_hex};
use wasm_cache_testkit::registry::{Registry, RegistryKind};

fn assert_kind(err: &wasm_cache::Error, kind: ErrorKind, wording: &str) {
    let shown = err.to_string();
    assert_eq!(err.kind(), kind, "{shown}");
    assert!(shown.contains(wording), "{shown:?} lacks {wording:?}");
}

async fn cache_for(dir: &Path, insecure: &str) -> Cache {
    Cache::builder(dir)
        .background_purge(false)
        .insecure_hosts([insecure])
        .build()
        .await
        .unwrap()
}

async fn must_fail(cache: &Cache, req: &GetRequest) -> wasm_cache::Error {
    match within(req.timeout + HANG_SLACK, "a get", cache.get(req)).await {
        Ok(p) => panic!("{req:?} succeeded with {}", p.display()),
        Err(e) => e,
    }
}

fn req(url: &str) -> GetRequest {
    GetRequest::new(url)
        .resource("ns/plugin", "1")
        .timeout(Duration::from_secs(4))
}

// ---------------------------------------------------------------------------
// A real registry
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_serving_blobs_that_do_not_match_their_digest() {
    let registry = Registry::start(RegistryKind::Plain);
    let good = sample_module(30_000, 1);
    let good_img = push_oci_image(&registry, "org/good", "v1", &good).await;
    let dir = tempfile::tempdir().unwrap();
    let cache = cache_for(dir.path(), &registry.host()).await;
    let good_path = cache.get(&req(&good_img.url)).await.unwrap();

    let image = push_oci_image(&registry, "org/evil", "v1", &sample_module(50_000, 2)).await;
    registry.corrupt_blob(&image.layer_digest);
    let raw = push_cncf_artifact(&registry, "org/evil-raw", "v1", &sample_module(50_000, 3)).await;
    registry.corrupt_blob(&raw.layer_digest);
    for pushed in [&image, &raw] {
        let err = must_fail(&cache, &req(&pushed.url)).await;
        assert_kind(&err, ErrorKind::Integrity, &pushed.layer_digest);
        // Pinned to the right manifest, the blob is still refused.
        let err = must_fail(&cache, &req(&pushed.digest_url)).await;
        assert_eq!(err.kind(), ErrorKind::Integrity, "{err}");
    }
    // Nothing of the corrupt blobs is kept; the good module is intact and served offline.
    assert_eq!(
        module_files(dir.path()),
        [sha256_hex(&good)].into_iter().collect()
    );
    assert_store_consistent(&cache);
    drop(registry);
    let again = cache
        .get(&req(&good_img.url).pull_policy(PullPolicy::IfNotPresent))
        .await
        .unwrap();
    assert_eq!(again, good_path);
    assert_eq!(std::fs::read(&again).unwrap(), good);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_down_fails_within_the_deadline_and_cached_modules_stay_served() {
    let registry = Registry::start(RegistryKind::Plain);
    let good = sample_module(30_000, 4);
    let pushed = push_oci_image(&registry, "org/m", "v1", &good).await;
    let host = registry.host();
    let dir = tempfile::tempdir().unwrap();
    let cache = cache_for(dir.path(), &host).await;
    let path = cache.get(&req(&pushed.url)).await.unwrap();
    drop(registry); // Killed: the port now refuses connections.

    // What needs the network fails clearly and in time.
    let err = must_fail(&cache, &req(&format!("oci://{host}/org/other:v1"))).await;
    assert!(
        matches!(err.kind(), ErrorKind::Transport | ErrorKind::Timeout),
        "{err}"
    );
    let always = req(&pushed.url)
        .resource("ns/plugin", "2")
        .pull_policy(PullPolicy::Always);
    let err = must_fail(&cache, &always).await;
    assert!(
        matches!(err.kind(), ErrorKind::Transport | ErrorKind::Timeout),
        "{err}"
    );
    // What is cached is still served: by tag (IfNotPresent), by digest, and by
    // the resource version that saw it (the failed Always pull recorded nothing).
    for r in [
        req(&pushed.url).pull_policy(PullPolicy::IfNotPresent),
        req(&pushed.digest_url),
        req(&pushed.url).pull_policy(PullPolicy::Always),
    ] {
        assert_eq!(cache.get(&r).await.unwrap(), path);
    }
    assert_eq!(std::fs::read(&path).unwrap(), good);
    assert_store_consistent(&cache);
}

const SECRET: &str = "hunter2-Pull-S3cret";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_secrets_that_are_not_docker_configs_are_refused_without_echo() {
    let registry = Registry::start(RegistryKind::BasicAuth);
    let pushed = push_oci_image(&registry, "org/private", "v1", &sample_module(20_000, 5)).await;
    let dir = tempfile::tempdir().unwrap();
    let cache = cache_for(dir.path(), &registry.host()).await;
    let host = registry.host();
    let bad_secrets = [
        format!("{SECRET} is not json"),
        format!("[\"{SECRET}\"]"),
        format!(r#"{{"auths":"{SECRET}"}}"#),
        format!(r#"{{"auths":{{"{host}":{{"auth":"{SECRET}"}}}}}}"#),
        format!(r#"{{"auths":{{"{host}":{{"auth":"{}"}}}}}}"#, b64(SECRET)),
        "\u{0}\u{1}binary".to_owned(),
    ];
    for secret in &bad_secrets {
        let r = req(&pushed.url).pull_secret(PullSecret::new(secret.clone().into_bytes()));
        assert_no_secret(
            &format!("{r:?}"),
            &[SECRET, &b64(SECRET)],
            "a request's Debug",
        );
        let err = must_fail(&cache, &r).await;
        assert_kind(&err, ErrorKind::InvalidInput, "invalid pull secret");
        assert_no_secret(
            &format!("{err} {err:?}"),
            &[SECRET, &b64(SECRET)],
            "an error",
        );
    }
    // The right secret works, so the refusals above were about the secrets.
    let good = req(&pushed.url).pull_secret(PullSecret::new(registry.docker_config_json()));
    cache.get(&good).await.unwrap();
    assert_store_consistent(&cache);
}

fn b64(s: &str) -> String {
    // Standard base64, enough for the short ASCII secrets of these tests.
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in s.as_bytes().chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn credential_helpers_run_only_from_the_operators_config_never_from_a_pull_secret() {
    let registry = Registry::start(RegistryKind::BasicAuth);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let pushed = rt.block_on(push_oci_image(
        &registry,
        "org/helper",
        "v1",
        &sample_module(9000, 6),
    ));
    let host = registry.host();
    let work = tempfile::tempdir().unwrap();
    // A fake helper that leaves a marker if anything executes it.
    let bin = work.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let marker = work.path().join("helper-was-run");
    let helper = bin.join("docker-credential-wasmcachetest");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\ntouch '{}'\necho '{{\"Username\":\"{}\",\"Secret\":\"{}\"}}'\n",
            marker.display(),
            wasm_cache_testkit::registry::TEST_USER,
            wasm_cache_testkit::registry::TEST_PASSWORD,
        ),
    )
    .unwrap();
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let helpers = format!(
        r#"{{"credsStore":"wasmcachetest","credHelpers":{{"{host}":"wasmcachetest"}},"auths":{{}}}}"#
    );
    // As the default docker config ($DOCKER_CONFIG/config.json)...
    let docker_config = work.path().join("docker");
    std::fs::create_dir(&docker_config).unwrap();
    std::fs::write(docker_config.join("config.json"), &helpers).unwrap();
    // ...and as a pull secret.
    let secret = work.path().join("secret.json");
    std::fs::write(&secret, &helpers).unwrap();
    let cache_dir = work.path().join("cache");
    let fetch = |with_secret: bool| {
        let mut c = cli(&cache_dir);
        c.args([
            "fetch",
            &pushed.url,
            "--insecure-registry",
            &host,
            "--timeout",
            "5s",
            "-vvv",
        ])
        .env("PATH", &path)
        .env("DOCKER_CONFIG", &docker_config);
        if with_secret {
            c.arg("--pull-secret").arg(&secret);
        }
        c.output().unwrap()
    };
    // The pull secret wins and is data only: anonymous, so the registry says
    // no; neither its helpers nor the operator's were run.
    let out = fetch(true);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("unauthorized"), "{stderr}");
    assert!(
        !marker.exists(),
        "a credential helper was executed for a pull secret"
    );
    // Without a secret, the operator's docker config names the helper: it
    // runs, its credentials pull the module, and `-v` says where they came
    // from, never what they are.
    let out = fetch(false);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        marker.exists(),
        "the operator's credential helper did not run"
    );
    assert!(
        stderr.contains("docker-credential-wasmcachetest"),
        "{stderr}"
    );
    assert!(
        !stderr.contains(wasm_cache_testkit::registry::TEST_PASSWORD),
        "the helper's secret was logged"
    );
    std::fs::remove_file(&marker).unwrap();
    // Control: the helper is found on that PATH and does leave the marker when run.
    let ran = std::process::Command::new("docker-credential-wasmcachetest")
        .arg("get")
        .env("PATH", &path)
        .output()
        .unwrap();
    assert!(ran.status.success());
    assert!(marker.exists(), "the control run did not leave the marker");
}

// ---------------------------------------------------------------------------
// A fake registry for what a real one would not serve
// ---------------------------------------------------------------------------

/// A minimal OCI distribution API on the testkit's loopback server, serving
/// whatever manifests and blobs a test gives it.
struct FakeRegistry {
    server: TestServer,
}

const REPO: &str = "org/m";

impl FakeRegistry {
    fn start() -> Self {
        let server = TestServer::start(ServerOptions::plain());
        server.route("/v2/", Route::bytes(b"{}".to_vec()));
        Self { server }
    }

    fn host(&self) -> String {
        self.server.host_port()
    }

    fn url(&self, tag: &str) -> String {
        format!("oci://{}/{REPO}:{tag}", self.host())
    }

    /// Serves `body` as the manifest `tag` (and by its digest); returns the digest.
    fn manifest(&self, tag: &str, media_type: &str, body: &[u8]) -> String {
        let digest = digest_of(body);
        let route = Route::bytes(body.to_vec())
            .with_header("content-type", media_type)
            .with_header("docker-content-digest", &digest);
        self.server
            .route(&format!("/v2/{REPO}/manifests/{tag}"), route.clone());
        self.server
            .route(&format!("/v2/{REPO}/manifests/{digest}"), route);
        digest
    }

    /// Serves `route` as the blob `digest`.
    fn blob(&self, digest: &str, route: Route) {
        self.server
            .route(&format!("/v2/{REPO}/blobs/{digest}"), route);
    }

    fn blob_hits(&self, digest: &str) -> usize {
        self.server.hits(&format!("/v2/{REPO}/blobs/{digest}"))
    }
}

fn oci_manifest(layer_media_type: &str, layer_digest: &str, layer_size: u64) -> Vec<u8> {
    let config = digest_of(b"{}");
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 2},
        "layers": [{"mediaType": layer_media_type, "digest": layer_digest, "size": layer_size}],
    }))
    .unwrap()
}

/// A cache that already holds a good module from the fake registry.
async fn fake_with_good() -> (FakeRegistry, tempfile::TempDir, Cache, Vec<u8>) {
    let fake = FakeRegistry::start();
    let good = sample_module(20_000, 7);
    let layer = plugin_tar_gz(&good);
    let digest = digest_of(&layer);
    fake.blob(&digest, Route::bytes(layer.clone()));
    fake.manifest(
        "good",
        OCI_MANIFEST,
        &oci_manifest(OCI_LAYER_GZIP, &digest, layer.len() as u64),
    );
    let dir = tempfile::tempdir().unwrap();
    let cache = cache_for(dir.path(), &fake.host()).await;
    let path = cache.get(&req(&fake.url("good"))).await.unwrap();
    assert_eq!(std::fs::read(path).unwrap(), good);
    (fake, dir, cache, good)
}

/// After an attack: only the good module is stored, and it is still served.
async fn assert_intact(fake: &FakeRegistry, dir: &Path, cache: &Cache, good: &[u8]) {
    assert_eq!(module_files(dir), [sha256_hex(good)].into_iter().collect());
    assert_store_consistent(cache);
    let path = cache
        .get(&req(&fake.url("good")).pull_policy(PullPolicy::IfNotPresent))
        .await
        .unwrap();
    assert_eq!(std::fs::read(path).unwrap(), good);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_that_are_not_usable_json_are_refused() {
    let (fake, dir, cache, good) = fake_with_good().await;
    let cases: [(&str, &[u8], &str); 6] = [
        ("notjson", b"<html>this is not json {", "is not valid JSON"),
        ("array", b"[1, 2, 3]", "not a JSON object"),
        ("noversion", br#"{"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#, "schemaVersion"),
        ("v1", br#"{"schemaVersion":1,"layers":[]}"#, "schemaVersion"),
        ("nolayers", br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[]}"#, "not a Wasm image"),
        ("deep", &[b'['; 100_000], "JSON"),
    ];
    for (tag, body, wording) in cases {
        fake.manifest(tag, OCI_MANIFEST, body);
        let err = must_fail(&cache, &req(&fake.url(tag))).await;
        assert_eq!(err.kind(), ErrorKind::Manifest, "{tag}: {err}");
        assert!(err.to_string().contains(wording), "{tag}: {err}");
    }
    // Layer digests become request paths: anything but sha256 hex is refused.
    for (tag, digest) in [
        ("traversal", "sha256:../../../../etc/passwd"),
        ("md5", "md5:d41d8cd98f00b204e9800998ecf8427e"),
    ] {
        fake.manifest(tag, OCI_MANIFEST, &oci_manifest(OCI_LAYER_GZIP, digest, 10));
        let err = must_fail(&cache, &req(&fake.url(tag))).await;
        assert_eq!(err.kind(), ErrorKind::Manifest, "{tag}: {err}");
    }
    // An index whose entry is itself an index.
    let inner = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [],
    }))
    .unwrap();
    let inner_digest = fake.manifest("inner", OCI_INDEX, &inner);
    let outer = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_INDEX, "digest": inner_digest, "size": inner.len(),
                       "platform": {"os": "wasip1", "architecture": "wasm"}}],
    }))
    .unwrap();
    fake.manifest("nested", OCI_INDEX, &outer);
    let err = must_fail(&cache, &req(&fake.url("nested"))).await;
    assert_eq!(err.kind(), ErrorKind::Manifest, "{err}");
    assert_intact(&fake, dir.path(), &cache, &good).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layers_larger_than_the_limit_are_refused_before_download() {
    let (fake, dir, cache, good) = fake_with_good().await;
    let layer = plugin_tar_gz(&sample_module(10_000, 8));
    let digest = digest_of(&layer);
    fake.blob(&digest, Route::bytes(layer.clone()));
    for (tag, media_type) in [
        ("gib", OCI_LAYER_GZIP),
        (
            "gibraw",
            "application/vnd.module.wasm.content.layer.v1+wasm",
        ),
    ] {
        let manifest = if tag == "gib" {
            oci_manifest(media_type, &digest, 1 << 30)
        } else {
            serde_json::to_vec(&serde_json::json!({
                "schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": "application/vnd.module.wasm.config.v1+json", "digest": digest_of(b"{}"), "size": 2},
                "layers": [
                    {"mediaType": "application/vnd.module.wasm.config.v1+json", "digest": digest_of(b"{}"), "size": 2},
                    {"mediaType": media_type, "digest": digest, "size": 1u64 << 30},
                ],
            }))
            .unwrap()
        };
        fake.manifest(tag, OCI_MANIFEST, &manifest);
        let err = must_fail(&cache, &req(&fake.url(tag))).await;
        assert_kind(&err, ErrorKind::InvalidModule, "exceeds the size limit");
    }
    assert_eq!(
        fake.blob_hits(&digest),
        0,
        "a layer that cannot fit must not be downloaded"
    );
    // A layer that declares less than it sends is caught while streaming:
    // with a Content-Length up front, and without one (chunked) by counting.
    for (tag, route) in [
        ("liar", Route::bytes(layer.clone())),
        ("liarchunked", Route::Chunked(layer.clone().into())),
    ] {
        fake.blob(&digest, route);
        fake.manifest(
            tag,
            OCI_MANIFEST,
            &oci_manifest(OCI_LAYER_GZIP, &digest, 100),
        );
        let err = must_fail(&cache, &req(&fake.url(tag))).await;
        assert_eq!(err.kind(), ErrorKind::Integrity, "{tag}: {err}");
    }
    assert_intact(&fake, dir.path(), &cache, &good).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_realms_at_metadata_or_odd_addresses_are_refused() {
    for realm in [
        "http://169.254.169.254/latest/meta-data/iam/token",
        "http://100.100.100.200/token",
        "http://[fe80::1]:8080/token",
        "http://[fd00:ec2::254]/token",
        "file:///etc/passwd",
        "http:///no-host",
    ] {
        let fake = FakeRegistry::start();
        // A token-auth registry answers 401 with the challenge everywhere.
        let challenge = Route::Status(401).with_header(
            "www-authenticate",
            &format!(r#"Bearer realm="{realm}",service="fake",scope="repository:{REPO}:pull""#),
        );
        let manifest = format!("/v2/{REPO}/manifests/v1");
        fake.server.route("/v2/", challenge.clone());
        fake.server.route(&manifest, challenge);
        let dir = tempfile::tempdir().unwrap();
        let cache = cache_for(dir.path(), &fake.host()).await;
        let secret = PullSecret::new(
            format!(
                r#"{{"auths":{{"{}":{{"auth":"{}"}}}}}}"#,
                fake.host(),
                b64(&format!("u:{SECRET}"))
            )
            .into_bytes(),
        );
        let err = must_fail(&cache, &req(&fake.url("v1")).pull_secret(secret)).await;
        assert_kind(&err, ErrorKind::Blocked, "refused token realm");
        assert_no_secret(
            &format!("{err} {err:?}"),
            &[SECRET, &b64(&format!("u:{SECRET}"))],
            "an error",
        );
        // The manifest was asked for anonymously only: the credentials went nowhere.
        let asked = fake.server.requests(&manifest);
        assert!(!asked.is_empty(), "{realm}");
        assert!(
            asked
                .iter()
                .all(|r| !r.headers.contains_key("authorization")),
            "{realm}: credentials were sent"
        );
        assert!(module_files(dir.path()).is_empty());
    }
}
