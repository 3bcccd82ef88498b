//! Secrets never reach logs or `Debug` output (issue 14, item 3).
//!
//! A `tracing` subscriber capturing every event and every span field at every
//! level (and `log` records, bridged) is installed first; then the cache goes
//! through its miss, hit, vanished-file, purge (expiry and byte budget) and
//! failure paths with URLs carrying user-info and a signed query
//! (`https://admin:HUNTER2@127.0.0.1:<port>/m.wasm?sig=SECRET`, served by the
//! testkit HTTPS server) and with an OCI pull secret. No captured line and no
//! `Debug` (or `Display`) of entries, records, purge reports, errors, requests
//! or the cache may contain any part of a secret.

mod common;

use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use common::{assert_module_at, clock, req};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use wasm_cache::{Cache, DEFAULT_GRACE, PullSecret};
use wasm_cache_testkit::http::{Route, ServerOptions, TestServer};
use wasm_cache_testkit::images::push_oci_image;
use wasm_cache_testkit::modules::{sample_module, sha256_hex};
use wasm_cache_testkit::registry::{Registry, RegistryKind};

type Lines = Arc<Mutex<Vec<String>>>;

fn lock(lines: &Lines) -> std::sync::MutexGuard<'_, Vec<String>> {
    lines.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Records every field of every span (at creation and on `record`) and of
/// every event, whatever its level or target.
struct Capture(Lines);

struct Fields(String);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, " {}={value:?}", field.name());
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        let _ = write!(self.0, " {}={value}", field.name());
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
    fn on_new_span(&self, attrs: &Attributes<'_>, _id: &Id, _ctx: Context<'_, S>) {
        let mut f = Fields(String::new());
        attrs.record(&mut f);
        let m = attrs.metadata();
        lock(&self.0).push(format!(
            "span {} {} {}:{}",
            m.level(),
            m.target(),
            m.name(),
            f.0
        ));
    }

    fn on_record(&self, _id: &Id, values: &Record<'_>, _ctx: Context<'_, S>) {
        let mut f = Fields(String::new());
        values.record(&mut f);
        lock(&self.0).push(format!("record:{}", f.0));
    }

    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut f = Fields(String::new());
        event.record(&mut f);
        let m = event.metadata();
        lock(&self.0).push(format!("event {} {}:{}", m.level(), m.target(), f.0));
    }
}

const USER: &str = "admin";
const PASSWORD: &str = "HUNTER2";
const OCI_PASSWORD: &str = "HUNTER2-oci-SECRET";

/// What no output may contain: the user-info, the query, and the base64 of
/// the basic credentials a fetcher would send.
fn forbidden() -> Vec<String> {
    vec![
        USER.to_owned(),
        PASSWORD.to_owned(),
        "sig=".to_owned(),
        "SECRET".to_owned(),
        base64(&format!("{USER}:{PASSWORD}")),
        base64(&format!("{USER}:{OCI_PASSWORD}")),
    ]
}

fn base64(s: &str) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in s.as_bytes().chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(A[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Collects `Debug` (and `Display` where there is one) renderings to check.
#[derive(Default)]
struct Outputs(Vec<(String, String)>);

impl Outputs {
    fn debug(&mut self, what: &str, v: &impl std::fmt::Debug) {
        self.0.push((format!("Debug of {what}"), format!("{v:?}")));
        self.0
            .push((format!("pretty Debug of {what}"), format!("{v:#?}")));
    }

    fn error(&mut self, what: &str, e: &wasm_cache::Error) {
        self.debug(what, e);
        self.0.push((format!("Display of {what}"), e.to_string()));
    }

    fn assert_clean(&self) {
        for (what, text) in &self.0 {
            for f in forbidden() {
                assert!(!text.contains(&f), "{what} contains {f:?}: {text}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_log_line_and_no_debug_output_holds_a_secret() {
    let lines: Lines = Arc::default();
    tracing_subscriber::registry()
        .with(Capture(Arc::clone(&lines)))
        .try_init()
        .expect("the only subscriber of this test binary");

    let server = TestServer::start(ServerOptions::tls());
    let ca_dir = tempfile::tempdir().unwrap();
    let ca = server.write_ca_file(ca_dir.path()).unwrap();
    let module = sample_module(6_000, 31);
    let module2 = sample_module(6_000, 32);
    server.route("/m.wasm", Route::bytes(module.clone()));
    server.route("/n.wasm", Route::bytes(module2.clone()));
    server.route("/missing.wasm", Route::Status(404));
    let secret_url = |path: &str| {
        format!(
            "https://{USER}:{PASSWORD}@{}{path}?sig=SECRET",
            server.host_port()
        )
    };
    let url = secret_url("/m.wasm");
    let url2 = secret_url("/n.wasm");

    let registry = Registry::start(RegistryKind::BasicAuthWith {
        user: USER.to_owned(),
        password: OCI_PASSWORD.to_owned(),
    });
    let image = sample_module(5_000, 33);
    let pushed = push_oci_image(&registry, "org/private", "v1", &image).await;
    let pull_secret = |password: &str| {
        PullSecret::new(
            serde_json::to_vec(&serde_json::json!({
                "auths": { registry.host(): { "username": USER, "password": password } }
            }))
            .unwrap(),
        )
    };

    let dir = tempfile::tempdir().unwrap();
    let c = clock();
    let cache = Cache::builder(dir.path())
        .background_purge(false)
        .clock(Arc::new(c.clone()))
        .ca_file(ca)
        .insecure_hosts([registry.host()])
        .max_bytes(Some(8_000))
        .build()
        .await
        .unwrap();
    let mut out = Outputs::default();

    // Miss, then hit.
    let miss = req(&url, "1");
    out.debug("a GetRequest", &miss);
    let p = cache.get(&miss).await.unwrap();
    assert_module_at(&p, &module);
    assert_eq!(server.hits("/m.wasm"), 1);
    assert_eq!(cache.get(&miss).await.unwrap(), p);
    assert_eq!(server.hits("/m.wasm"), 1, "the second get is a hit");
    out.debug("entries", &cache.entries());
    out.debug("a checksum record", &cache.checksum_record(&url));
    out.debug("the cache", &cache);

    // Vanished file: deleted between gets, fetched again once the deletion
    // is observable (the directory watch's event read, microseconds later).
    std::fs::remove_file(&p).unwrap();
    let deleted = std::time::Instant::now();
    while server.hits("/m.wasm") < 2 {
        assert_eq!(cache.get(&miss).await.unwrap(), p);
        assert!(
            deleted.elapsed() < Duration::from_secs(20),
            "the deleted module is still handed out"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_module_at(&p, &module);
    assert_eq!(
        server.hits("/m.wasm"),
        2,
        "the vanished file is fetched again"
    );

    // A redirect to a pre-signed URL (object stores hand these out): the
    // signature is a secret too, whether the target answers or fails.
    let module3 = sample_module(1_000, 34);
    server.route("/signed.wasm", Route::bytes(module3.clone()));
    server.route(
        "/r.wasm",
        Route::redirect(server.url("/signed.wasm?X-Signature=SECRET")),
    );
    server.route(
        "/r404.wasm",
        Route::redirect(server.url("/missing.wasm?X-Signature=SECRET")),
    );
    let redirected = cache.get(&req(&server.url("/r.wasm"), "1")).await.unwrap();
    assert_module_at(&redirected, &module3);
    assert_eq!(server.hits("/signed.wasm"), 1);
    let e = cache
        .get(&req(&server.url("/r404.wasm"), "1"))
        .await
        .unwrap_err();
    out.error("a 404 after a redirect to a signed URL", &e);

    // OCI with a pull secret: a pull, a hit, and a wrong secret.
    let oci = req(&pushed.url, "1").pull_secret(pull_secret(OCI_PASSWORD));
    out.debug("an OCI GetRequest", &oci);
    assert_module_at(&cache.get(&oci).await.unwrap(), &image);
    assert_module_at(&cache.get(&oci).await.unwrap(), &image);
    let wrong = req(&pushed.url, "2")
        .pull_secret(pull_secret("wrong-SECRET"))
        .pull_policy(wasm_cache::PullPolicy::Always);
    let e = cache.get(&wrong).await.unwrap_err();
    assert_eq!(e.kind(), wasm_cache::ErrorKind::Unauthorized, "{e}");
    out.error("an unauthorized error", &e);

    // Failures: 404, wrong checksum, malformed URL with user-info.
    let e = cache
        .get(&req(&secret_url("/missing.wasm"), "1"))
        .await
        .unwrap_err();
    out.error("a 404 error", &e);
    let e = cache
        .get(&req(&url2, "1").checksum(sha256_hex(b"other")))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("which does not match"), "{e}");
    out.error("a checksum mismatch", &e);
    let e = cache
        .get(&req(
            &format!("https://{USER}:{PASSWORD}@[::1/m.wasm?sig=SECRET"),
            "1",
        ))
        .await
        .unwrap_err();
    out.error("an unparseable URL error", &e);

    // Byte budget: a second module goes over 8000 bytes; once out of grace,
    // a purge evicts the least recently used.
    c.advance(Duration::from_secs(1));
    assert_module_at(&cache.get(&req(&url2, "1")).await.unwrap(), &module2);
    c.advance(DEFAULT_GRACE + Duration::from_secs(1));
    // The fetch over budget may already have evicted in the background;
    // either way, after this purge the cache fits its budget.
    let report = cache.purge().await.unwrap();
    let total: u64 = cache.entries().iter().map(|e| e.size).sum();
    assert!(
        total <= 8_000,
        "{total} bytes over an 8000 byte budget: {report:?}"
    );
    out.debug("a budget purge report", &report);
    out.debug("evicted keys", &report.evicted);

    // Expiry: everything left goes.
    c.advance(wasm_cache::DEFAULT_EXPIRY + Duration::from_secs(1));
    let report = cache.purge().await.unwrap();
    assert!(!report.expired.is_empty(), "{report:?}");
    out.debug("an expiry purge report", &report);
    assert!(cache.entries().is_empty());

    let e = {
        cache.shutdown().await.unwrap();
        cache.get(&miss).await.unwrap_err()
    };
    out.error("a shut-down error", &e);

    // A mirror with credentials (the basic-auth registry standing in for a
    // mirror of a plain upstream): served with the right password, refused
    // with a wrong one (the upstream then serves); every mirror failed with
    // the upstream gone.
    let upstream = Registry::start(RegistryKind::Plain);
    let mirrored = push_oci_image(&upstream, "org/private", "v1", &image).await;
    let mirror_url = format!("http://{}", registry.host());
    for (password, n) in [(OCI_PASSWORD, 1), ("wrong-SECRET", 2)] {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::builder(dir.path())
            .background_purge(false)
            .insecure_hosts([upstream.host()])
            .mirror_with(
                upstream.host(),
                wasm_cache::Mirror::new(&mirror_url).credentials(USER, password),
            )
            .build()
            .await
            .unwrap();
        out.debug(&format!("a cache with mirror credentials ({n})"), &cache);
        assert_module_at(&cache.get(&req(&mirrored.url, "1")).await.unwrap(), &image);
        cache.shutdown().await.unwrap();
    }
    let gone = mirrored.url.clone();
    let upstream_host = upstream.host();
    drop(upstream);
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::builder(dir.path())
        .background_purge(false)
        .insecure_hosts([upstream_host.clone()])
        .mirror_with(
            upstream_host,
            wasm_cache::Mirror::new(&mirror_url).credentials(USER, "wrong-SECRET"),
        )
        .build()
        .await
        .unwrap();
    let e = cache.get(&req(&gone, "1")).await.unwrap_err();
    out.error("every mirror and the registry failed", &e);
    cache.shutdown().await.unwrap();

    out.assert_clean();
    let captured = lock(&lines).clone();
    eprintln!("{} log lines and spans captured", captured.len());
    assert!(
        captured.len() >= 10,
        "the capture saw too little to mean anything: {captured:#?}"
    );
    // Each path did log something (redacted), so the check is not vacuous.
    for expected in [
        "fetched wasm module",
        "vanished",
        "removed stale wasm module",
        "served by mirror",
        "every mirror failed",
    ] {
        assert!(
            captured.iter().any(|l| l.contains(expected)),
            "no captured line mentions {expected:?}"
        );
    }
    for line in &captured {
        for f in forbidden() {
            assert!(!line.contains(&f), "a log line contains {f:?}: {line}");
        }
    }
}
