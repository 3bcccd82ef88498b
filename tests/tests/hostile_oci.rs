//! The OCI fetcher (and, where the attack is the same, the HTTP fetcher)
//! against registries that try to escape the transport's guards: token realms
//! switched after a first answer or on plain http, blob redirects to
//! metadata addresses, inwards or down to http, redirect loops, NAT64 and
//! IPv4-mapped metadata addresses, and proxies. Fake registries are the
//! testkit's loopback server (a real registry does none of this); tests that
//! need 169.254.169.254 or a public address run in a network namespace of
//! their own.

mod common;

use std::time::{Duration, Instant};

use common::{assert_no_secret, cli};
use wasm_cache::{HttpFetcher, OciFetcher};
use wasm_cache_core::{Error, ErrorKind, FetchRequest, Fetcher, ModuleUrl, PullSecret};
use wasm_cache_testkit::http::{Route, ServerOptions, TestServer};
use wasm_cache_testkit::images::{OCI_MANIFEST, digest_of};
use wasm_cache_testkit::modules::sample_module;
use wasm_cache_testkit::registry::{Registry, RegistryKind, docker_config_json};

const REPO: &str = "org/m";
const SECRET: &str = "hunter2-Pull-S3cret";

fn request(url: &str) -> FetchRequest {
    FetchRequest::new(
        ModuleUrl::parse(url).unwrap(),
        Instant::now() + Duration::from_secs(10),
    )
}

fn with_secret(req: FetchRequest, host: &str) -> FetchRequest {
    req.with_pull_secret(Some(PullSecret::new(docker_config_json(host, "u", SECRET))))
}

async fn fetch_err(f: &dyn Fetcher, req: &FetchRequest) -> Error {
    let mut sink = Vec::new();
    match tokio::time::timeout(Duration::from_secs(30), f.fetch(req, &mut sink)).await {
        Ok(Ok(_)) => panic!("{} was fetched", req.url),
        Ok(Err(e)) => e,
        Err(_) => panic!("{} hung", req.url),
    }
}

fn assert_blocked(e: &Error, wording: &str) {
    assert_eq!(e.kind(), ErrorKind::Blocked, "{e}");
    assert!(e.to_string().contains(wording), "{e:?} lacks {wording:?}");
    assert_no_secret(&format!("{e} {e:?}"), &[SECRET], "an error");
}

/// A raw Wasm artifact (CNCF layout) served by `server` as `REPO:v1`; the
/// blob route is left to the test. Returns the layer digest.
fn serve_artifact(server: &TestServer, module: &[u8]) -> String {
    let layer = digest_of(module);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.wasm.config.v0+json", "digest": digest_of(b"{}"), "size": 2},
        "layers": [{"mediaType": "application/wasm", "digest": layer, "size": module.len()}],
    }))
    .unwrap();
    server.route(
        &format!("/v2/{REPO}/manifests/v1"),
        Route::bytes(manifest).with_header("content-type", OCI_MANIFEST),
    );
    layer
}

fn url(server: &TestServer) -> String {
    format!("oci://{}/{REPO}:v1", server.host_port())
}

fn challenge(realm: &str) -> Route {
    Route::Status(401).with_header(
        "www-authenticate",
        &format!(r#"Bearer realm="{realm}",service="fake",scope="repository:{REPO}:pull""#),
    )
}

fn authorized_hits(server: &TestServer, path: &str) -> usize {
    server
        .requests(path)
        .iter()
        .filter(|r| r.headers.contains_key("authorization"))
        .count()
}

/// The old fetcher checked realms on a probe of `/v2/` of its own; its client
/// then asked `/v2/` again and followed whatever realm came back. Here the
/// registry answers the first `/v2/` without a challenge and everything after
/// with a realm on loopback: the credentials must not go there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_realm_named_after_a_first_unchallenged_answer_is_still_checked() {
    let server = TestServer::start(ServerOptions::tls());
    let realm = format!("https://{}/token", server.host_port());
    server.route("/v2/", Route::script([200], challenge(&realm)));
    server.route(&format!("/v2/{REPO}/manifests/v1"), challenge(&realm));
    server.route("/token", Route::bytes(&br#"{"token":"t"}"#[..]));
    let f = OciFetcher::builder()
        .docker_config_dir(None)
        .ca_pem(server.ca_pem().unwrap().into_bytes())
        .build()
        .unwrap();
    let e = fetch_err(
        &f,
        &with_secret(request(&url(&server)), &server.host_port()),
    )
    .await;
    assert_blocked(&e, "refused token realm");
    assert_eq!(
        authorized_hits(&server, "/token"),
        0,
        "credentials reached the realm"
    );
}

/// A verified https registry may not send the password to a plain-http realm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_realm_of_an_https_registry_is_refused() {
    let server = TestServer::start(ServerOptions::tls());
    let realm_server = TestServer::start(ServerOptions::plain());
    realm_server.route("/token", Route::bytes(&br#"{"token":"t"}"#[..]));
    let realm = realm_server.url("/token");
    server.route("/v2/", challenge(&realm));
    server.route(&format!("/v2/{REPO}/manifests/v1"), challenge(&realm));
    let f = OciFetcher::builder()
        .docker_config_dir(None)
        .ca_pem(server.ca_pem().unwrap().into_bytes())
        .allow_private_realms(true)
        .build()
        .unwrap();
    let e = fetch_err(
        &f,
        &with_secret(request(&url(&server)), &server.host_port()),
    )
    .await;
    assert_blocked(&e, "plain http");
    assert_eq!(realm_server.hits("/token"), 0, "the realm was contacted");
}

/// Blob redirects go through the transport's policy: never from https down
/// to http, never in a loop, never to a metadata address in any form.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_redirects_down_to_http_in_loops_or_to_nat64_metadata_are_refused() {
    let server = TestServer::start(ServerOptions::tls());
    let plain = TestServer::start(ServerOptions::plain());
    let module = sample_module(20_000, 1);
    let layer = serve_artifact(&server, &module);
    plain.route("/blob", Route::bytes(module.clone()));
    let blob = format!("/v2/{REPO}/blobs/{layer}");
    let f = OciFetcher::builder()
        .docker_config_dir(None)
        .ca_pem(server.ca_pem().unwrap().into_bytes())
        .build()
        .unwrap();
    let req = request(&url(&server));
    let cases = [
        (
            Route::Redirect {
                status: 307,
                location: plain.url("/blob"),
            },
            "https down to http",
        ),
        (
            Route::Redirect {
                status: 307,
                location: server.url(&blob),
            },
            "more than 10 redirects",
        ),
        (
            Route::Redirect {
                status: 307,
                location: "https://[64:ff9b::a9fe:a9fe]/latest/meta-data".into(),
            },
            "169.254.169.254",
        ),
        (
            Route::Redirect {
                status: 307,
                location: "https://[::ffff:169.254.169.254]/latest/meta-data".into(),
            },
            "link-local",
        ),
    ];
    for (route, wording) in cases {
        server.route(&blob, route);
        let e = fetch_err(&f, &req).await;
        assert_blocked(&e, wording);
    }
    assert_eq!(plain.hits("/blob"), 0, "followed a redirect down to http");
    // Control: served directly, the same blob is fetched.
    server.route(&blob, Route::bytes(module.clone()));
    let mut sink = Vec::new();
    f.fetch(&req, &mut sink).await.unwrap();
    assert!(sink == module);
}

/// NAT64 (`64:ff9b::/96`) and IPv4-mapped forms of metadata addresses are
/// refused before any connection, as registries and as HTTP hosts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nat64_and_mapped_metadata_addresses_are_refused() {
    let oci = OciFetcher::builder()
        .docker_config_dir(None)
        .insecure_hosts(["*"])
        .build()
        .unwrap();
    let http = HttpFetcher::builder().max_attempts(1).build().unwrap();
    for host in [
        "[64:ff9b::a9fe:a9fe]",
        "[64:ff9b::169.254.169.254]",
        "[::ffff:169.254.169.254]",
        "[64:ff9b::6464:64c8]",
        "[64:ff9b:1::a9fe:a9fe]",
    ] {
        let e = fetch_err(&oci, &request(&format!("oci://{host}:5000/{REPO}:v1"))).await;
        assert_blocked(&e, "IPv6 form of");
        let e = fetch_err(&http, &request(&format!("http://{host}/m.wasm"))).await;
        assert_blocked(&e, "IPv6 form of");
    }
}

/// In a network namespace of its own: a registry on a public address
/// (198.51.100.10) redirects the blob to 169.254.169.254 (a fake metadata
/// server there) or to loopback, and names a token realm on
/// 169.254.169.254; none of them is contacted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_and_realms_to_metadata_or_inwards_are_refused_in_a_namespace() {
    if !wasm_cache_testkit::netns::enter(
        "redirects_and_realms_to_metadata_or_inwards_are_refused_in_a_namespace",
        &["169.254.169.254/32", "198.51.100.10/32"],
    ) {
        return;
    }
    let public_ip = "198.51.100.10".parse().unwrap();
    let metadata_ip = "169.254.169.254".parse().unwrap();
    let registry = TestServer::start(ServerOptions::plain().bind(public_ip));
    let metadata = TestServer::start(ServerOptions::plain().bind(metadata_ip));
    let inner = TestServer::start(ServerOptions::plain());
    let module = sample_module(20_000, 2);
    let layer = serve_artifact(&registry, &module);
    metadata.route("/latest/meta-data", Route::bytes(module.clone()));
    metadata.route("/token", Route::bytes(&br#"{"token":"t"}"#[..]));
    inner.route("/blob", Route::bytes(module.clone()));
    let blob = format!("/v2/{REPO}/blobs/{layer}");
    let f = OciFetcher::builder()
        .docker_config_dir(None)
        .insecure_hosts(["198.51.100.10"])
        .build()
        .unwrap();
    let req = request(&url(&registry));
    // Control: the registry and the servers are reachable in here.
    registry.route(&blob, Route::bytes(module.clone()));
    let mut sink = Vec::new();
    f.fetch(&req, &mut sink).await.unwrap();
    assert!(sink == module);
    for (location, wording) in [
        (
            "http://169.254.169.254/latest/meta-data".to_owned(),
            "link-local",
        ),
        (inner.url("/blob"), "loopback"),
    ] {
        registry.route(
            &blob,
            Route::Redirect {
                status: 307,
                location,
            },
        );
        let e = fetch_err(&f, &req).await;
        assert_blocked(&e, wording);
    }
    assert_eq!(metadata.hits("/latest/meta-data"), 0, "metadata contacted");
    assert_eq!(inner.hits("/blob"), 0, "a public server sent us inwards");
    // A realm on the metadata address.
    let realm = challenge("http://169.254.169.254/token");
    registry.route(&format!("/v2/{REPO}/manifests/v2"), realm);
    let tagged = request(&format!("oci://{}/{REPO}:v2", registry.host_port()));
    let e = fetch_err(&f, &with_secret(tagged, &registry.host_port())).await;
    assert_blocked(&e, "refused token realm");
    assert_eq!(
        metadata.hits("/token"),
        0,
        "the metadata realm was contacted"
    );
}

/// A CONNECT proxy on loopback that counts the tunnels it opened.
async fn connect_proxy() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tunnels = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = tunnels.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let counted = counted.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if client.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let mut words = head.split_whitespace();
                let (Some("CONNECT"), Some(target)) = (words.next(), words.next()) else {
                    let _ = client
                        .write_all(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
                        .await;
                    return;
                };
                let Ok(mut upstream) = tokio::net::TcpStream::connect(target).await else {
                    let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
                    return;
                };
                counted.fetch_add(1, Ordering::SeqCst);
                if client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await
                    .is_ok()
                {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                }
            });
        }
    });
    (addr, tunnels)
}

/// `HTTPS_PROXY` is honoured (the pull goes through the proxy's tunnel) and
/// `NO_PROXY` bypasses it, for the command as users run it, by both fetchers
/// (an OCI registry and an HTTPS server).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_proxy_is_honoured_and_no_proxy_bypasses_it() {
    use std::sync::atomic::Ordering;
    let registry = Registry::start(RegistryKind::Tls);
    let module = sample_module(30_000, 3);
    let pushed =
        wasm_cache_testkit::images::push_cncf_artifact(&registry, "p/m", "v1", &module).await;
    let server = TestServer::start(ServerOptions::tls());
    server.route("/m.wasm", Route::bytes(module.clone()));
    let work = tempfile::tempdir().unwrap();
    let server_ca = server.write_ca_file(work.path()).unwrap();
    let (proxy, tunnels) = connect_proxy().await;
    let run = |url: &str, ca: &std::path::Path, no_proxy: &str, dir: &str| {
        let mut c = cli(&work.path().join(dir));
        for v in [
            "http_proxy",
            "https_proxy",
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "no_proxy",
            "NO_PROXY",
            "ALL_PROXY",
            "all_proxy",
        ] {
            c.env_remove(v);
        }
        c.args(["fetch", url, "--timeout", "20s", "--ca-file"])
            .arg(ca)
            .env("HTTPS_PROXY", format!("http://{proxy}"));
        if !no_proxy.is_empty() {
            c.env("NO_PROXY", no_proxy);
        }
        // The command blocks this worker; the proxy's tasks run on the other.
        let out = tokio::task::block_in_place(|| c.output().unwrap());
        assert!(
            out.status.success(),
            "{url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    for (url, ca) in [
        (pushed.url.clone(), registry.ca_file().unwrap().to_owned()),
        (server.url("/m.wasm"), server_ca),
    ] {
        let before = tunnels.load(Ordering::SeqCst);
        run(&url, &ca, "", &format!("through-{before}"));
        let through = tunnels.load(Ordering::SeqCst);
        assert!(through > before, "{url}: the proxy opened no tunnel");
        run(
            &url,
            &ca,
            "localhost,127.0.0.1",
            &format!("bypass-{before}"),
        );
        assert_eq!(
            tunnels.load(Ordering::SeqCst),
            through,
            "{url}: NO_PROXY did not bypass the proxy"
        );
    }
}
