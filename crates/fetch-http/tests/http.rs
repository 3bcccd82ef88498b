//! The HTTP fetcher against a real HTTP(S) server on 127.0.0.1.

use std::time::{Duration, Instant};

use bytes::Bytes;
use wasm_cache_conformance::{Fixture, run_all};
use wasm_cache_core::retry::Backoff;
use wasm_cache_core::{Error, ErrorKind, FetchRequest, Fetcher, ModuleUrl};
use wasm_cache_testkit::http::{Route, ServerOptions, TestServer};
use wasm_cache_testkit::modules::{gzip, plugin_tar_gz, sample_module, tar};
use wasm_fetch_http::{HttpFetcher, HttpFetcherBuilder};

/// A quick schedule so retry tests take milliseconds.
fn fast() -> Backoff {
    Backoff::default()
        .with_max_attempts(5)
        .with_initial(Duration::from_millis(10))
        .with_multiplier(1.5)
        .with_randomization(0.5)
        .with_max_interval(Duration::from_millis(50))
}

fn builder() -> HttpFetcherBuilder {
    HttpFetcher::builder().backoff(fast()).native_roots(false)
}

fn fetcher() -> HttpFetcher {
    builder().build().expect("default fetcher")
}

fn request(url: &str) -> FetchRequest {
    FetchRequest::new(
        ModuleUrl::parse(url).expect("test URL"),
        Instant::now() + Duration::from_secs(30),
    )
}

async fn get(f: &HttpFetcher, url: &str) -> Result<Vec<u8>, Error> {
    let mut sink = Vec::new();
    let fetched = f.fetch(&request(url), &mut sink).await?;
    assert_eq!(fetched.size, sink.len() as u64);
    assert_eq!(fetched.digest, None);
    Ok(sink)
}

#[tokio::test]
async fn downloads_a_module() {
    let server = TestServer::start(ServerOptions::plain());
    let m = sample_module(100_000, 1);
    server.route("/m.wasm", Route::bytes(m.clone()));
    assert_eq!(get(&fetcher(), &server.url("/m.wasm")).await.unwrap(), m);
    assert_eq!(server.hits("/m.wasm"), 1);
    let seen = &server.requests("/m.wasm")[0];
    assert!(seen.headers.get("authorization").is_none());
    assert!(
        seen.headers["user-agent"]
            .to_str()
            .unwrap()
            .starts_with("wasm-cache/")
    );
}

#[tokio::test]
async fn retries_500_then_succeeds() {
    let server = TestServer::start(ServerOptions::plain());
    let m = sample_module(5_000, 2);
    server.route(
        "/m.wasm",
        Route::script([500, 500, 500], Route::bytes(m.clone())),
    );
    assert_eq!(get(&fetcher(), &server.url("/m.wasm")).await.unwrap(), m);
    assert_eq!(server.hits("/m.wasm"), 4);
}

#[tokio::test]
async fn gives_up_after_five_attempts_with_the_reference_wording() {
    let server = TestServer::start(ServerOptions::plain());
    server.route("/m.wasm", Route::Status(500));
    let e = get(&fetcher(), &server.url("/m.wasm")).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "wasm module download failed after 5 attempts, last error: wasm module download request failed: status code 500"
    );
    assert!(matches!(e, Error::DownloadFailed { attempts: 5, .. }));
    assert_eq!(server.hits("/m.wasm"), 5);
}

#[tokio::test]
async fn the_default_schedule_also_stops_at_five() {
    // Istio's schedule (500 ms initial): four sleeps of about 0.5-3 s in all.
    let server = TestServer::start(ServerOptions::plain());
    server.route("/m.wasm", Route::Status(503));
    let f = HttpFetcher::builder().native_roots(false).build().unwrap();
    let e = get(&f, &server.url("/m.wasm")).await.unwrap_err();
    assert!(
        matches!(e, Error::DownloadFailed { attempts: 5, .. }),
        "{e}"
    );
    assert_eq!(server.hits("/m.wasm"), 5);
}

#[tokio::test]
async fn client_errors_and_unretryable_5xx_are_not_retried() {
    let server = TestServer::start(ServerOptions::plain());
    for (path, code) in [("/404", 404), ("/403", 403), ("/501", 501), ("/505", 505)] {
        server.route(path, Route::Status(code));
        let e = get(&fetcher(), &server.url(path)).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "wasm module download failed after 1 attempts, last error: wasm module download request failed: status code {code}"
            )
        );
        assert_eq!(server.hits(path), 1, "{path}");
    }
    let e = get(&fetcher(), &server.url("/404")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
}

#[tokio::test]
async fn an_expired_deadline_makes_no_request() {
    let server = TestServer::start(ServerOptions::plain());
    server.route("/m.wasm", Route::bytes(sample_module(100, 3)));
    let past = Instant::now()
        .checked_sub(Duration::from_millis(1))
        .unwrap();
    let req = FetchRequest::new(ModuleUrl::parse(&server.url("/m.wasm")).unwrap(), past);
    let e = fetcher().fetch(&req, &mut Vec::new()).await.unwrap_err();
    assert!(matches!(e, Error::Timeout { .. }), "{e}");
    assert_eq!(server.hits("/m.wasm"), 0);
    assert_eq!(fetcher().resolve(&req).await.unwrap(), None);
}

#[tokio::test]
async fn the_deadline_bounds_a_hanging_server() {
    let server = TestServer::start(ServerOptions::plain());
    server.route("/hang", Route::Hang);
    let req = FetchRequest::new(
        ModuleUrl::parse(&server.url("/hang")).unwrap(),
        Instant::now() + Duration::from_millis(300),
    );
    let e = fetcher().fetch(&req, &mut Vec::new()).await.unwrap_err();
    assert!(matches!(e, Error::Timeout { .. }), "{e}");
    assert_eq!(e.kind(), ErrorKind::Timeout);
}

#[tokio::test]
async fn a_stalled_body_times_out_per_attempt_and_is_retried() {
    let server = TestServer::start(ServerOptions::plain());
    server.route(
        "/stall",
        Route::Stall {
            prefix: Bytes::from_static(b"\0asm"),
            declared_len: 1000,
        },
    );
    let f = builder()
        .max_attempts(2)
        .attempt_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let e = get(&f, &server.url("/stall")).await.unwrap_err();
    assert!(
        e.to_string().starts_with(
            "wasm module download failed after 2 attempts, last error: transport error"
        ),
        "{e}"
    );
    assert!(e.to_string().contains("timed out after 200ms"), "{e}");
    assert_eq!(server.hits("/stall"), 2);
}

#[tokio::test]
async fn tls_needs_a_trusted_ca_or_an_insecure_listing() {
    let server = TestServer::start(ServerOptions::tls());
    let m = sample_module(20_000, 4);
    server.route("/m.wasm", Route::bytes(m.clone()));
    let url = server.url("/m.wasm");

    let strict = builder().max_attempts(1).build().unwrap();
    let e = get(&strict, &url).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Transport, "{e}");
    assert!(e.to_string().contains("certificate"), "{e}");

    let dir = tempfile::tempdir().unwrap();
    let ca = server.write_ca_file(dir.path()).unwrap();
    let trusting = builder().ca_file(&ca).build().unwrap();
    assert_eq!(get(&trusting, &url).await.unwrap(), m);
    let trusting = builder()
        .ca_pem(server.ca_pem().unwrap().into_bytes())
        .build()
        .unwrap();
    assert_eq!(get(&trusting, &url).await.unwrap(), m);

    for listed in [server.host_port(), "*".to_owned()] {
        let insecure = builder().insecure_hosts([listed]).build().unwrap();
        assert_eq!(get(&insecure, &url).await.unwrap(), m);
    }
    // Another port on the list does not help.
    let other = builder()
        .max_attempts(1)
        .insecure_hosts(["127.0.0.1:1"])
        .build()
        .unwrap();
    assert!(get(&other, &url).await.is_err());
}

#[tokio::test]
async fn every_box_gives_the_same_module() {
    let server = TestServer::start(ServerOptions::plain());
    let m = sample_module(300_000, 5);
    let long_name = format!("{}/plugin.wasm", "dir".repeat(60));
    let bodies = [
        ("/plain", m.clone()),
        ("/gzip", gzip(&m)),
        ("/tar", tar(&[("README.md", b"docs"), ("filter.wasm", &m)])),
        ("/tar.gz", plugin_tar_gz(&m)),
        ("/long.tar", gnu_long_name_tar(&long_name, &m)),
        ("/long.tar.gz", gzip(&gnu_long_name_tar(&long_name, &m))),
    ];
    let f = fetcher();
    for (path, body) in bodies {
        server.route(path, Route::bytes(body.clone()));
        assert_eq!(get(&f, &server.url(path)).await.unwrap(), m, "{path}");
        // The same without a Content-Length, as a gzip-encoded response would be.
        let chunked = format!("{path}-chunked");
        server.route(
            &chunked,
            Route::Chunked(Bytes::from(body))
                .with_header("content-type", "application/octet-stream")
                .with_header("content-encoding", "gzip"),
        );
        assert_eq!(
            get(&f, &server.url(&chunked)).await.unwrap(),
            m,
            "{chunked}"
        );
    }
}

/// A tar written by the `tar` crate with a GNU long-name entry (`L`).
fn gnu_long_name_tar(name: &str, content: &[u8]) -> Vec<u8> {
    let mut b = ::tar::Builder::new(Vec::new());
    let mut h = ::tar::Header::new_gnu();
    h.set_size(content.len() as u64);
    h.set_mode(0o644);
    h.set_entry_type(::tar::EntryType::Regular);
    b.append_data(&mut h, name, content).unwrap();
    b.into_inner().unwrap()
}

#[tokio::test]
async fn large_modules_stream() {
    let server = TestServer::start(ServerOptions::plain());
    let size = 24 * 1024 * 1024;
    server.route("/big", Route::Generated { size, seed: 6 });
    let mut sink = Chunks::default();
    let f = fetcher();
    let fetched = f
        .fetch(&request(&server.url("/big")), &mut sink)
        .await
        .unwrap();
    assert_eq!(fetched.size, size);
    assert_eq!(sink.bytes, sample_module(24 * 1024 * 1024, 6));
    assert!(sink.largest <= 1024 * 1024, "{}", sink.largest);
    assert!(sink.chunks > 10);
}

#[derive(Default)]
struct Chunks {
    bytes: Vec<u8>,
    chunks: usize,
    largest: usize,
}

impl wasm_cache_core::ModuleSink for Chunks {
    fn write(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        self.bytes.extend_from_slice(chunk);
        self.chunks += 1;
        self.largest = self.largest.max(chunk.len());
        Ok(())
    }
}

#[tokio::test]
async fn size_limits_fail_loudly() {
    let server = TestServer::start(ServerOptions::plain());
    let m = sample_module(50_000, 7);
    server.route("/m", Route::bytes(m.clone()));
    server.route("/chunked", Route::Chunked(Bytes::from(m.clone())));
    let f = fetcher();
    for path in ["/m", "/chunked"] {
        let req = request(&server.url(path)).with_max_size(49_999);
        let mut sink = Vec::new();
        let e = f.fetch(&req, &mut sink).await.unwrap_err();
        assert!(matches!(e, Error::TooLarge { limit: 49_999, .. }), "{e}");
        assert!(
            e.to_string()
                .ends_with("exceeds the size limit of 49999 bytes"),
            "{e}"
        );
        assert!(sink.len() <= 49_999);
        assert_eq!(server.hits(path), 1);
    }

    // A Content-Length far beyond the limit fails before the body is read: the
    // body here would stall forever.
    server.route(
        "/huge",
        Route::Stall {
            prefix: Bytes::new(),
            declared_len: 10 << 30,
        },
    );
    let req = request(&server.url("/huge")).with_max_size(1 << 20);
    let e = f.fetch(&req, &mut Vec::new()).await.unwrap_err();
    assert!(matches!(e, Error::TooLarge { .. }), "{e}");

    // A gzip bomb: 64 MiB of zeros behind a Wasm header, about 64 KiB on the wire.
    let mut inflated = b"\0asm\x01\0\0\0".to_vec();
    inflated.resize(64 << 20, 0);
    let bomb = gzip(&inflated);
    assert!(bomb.len() < 1 << 20);
    server.route("/bomb", Route::bytes(bomb));
    let req = request(&server.url("/bomb")).with_max_size(4 << 20);
    let mut sink = Vec::new();
    let e = f.fetch(&req, &mut sink).await.unwrap_err();
    assert!(
        matches!(e, Error::TooLarge { limit, .. } if limit == 4 << 20),
        "{e}"
    );
    assert!(sink.len() <= 4 << 20);
}

#[tokio::test]
async fn not_wasm_is_invalid() {
    let server = TestServer::start(ServerOptions::plain());
    server.route("/html", Route::bytes(&b"<html>not found</html>"[..]));
    server.route("/empty-tar", Route::bytes(tar(&[("README", b"hi")])));
    let f = fetcher();
    let e = get(&f, &server.url("/html")).await.unwrap_err();
    assert!(
        e.to_string()
            .starts_with("fetched Wasm binary from http://127.0.0.1:"),
        "{e}"
    );
    assert!(e.to_string().contains("not Wasm, gzip or tar"), "{e}");
    let e = get(&f, &server.url("/empty-tar")).await.unwrap_err();
    assert!(
        e.to_string().contains("no regular file named plugin.wasm"),
        "{e}"
    );
    assert_eq!(server.hits("/html"), 1);
}

#[tokio::test]
async fn broken_bodies_are_transport_errors() {
    let server = TestServer::start(ServerOptions::plain());
    let m = sample_module(200_000, 8);
    server.route(
        "/truncated",
        Route::Truncated {
            body: Bytes::from(m[..100_000].to_vec()),
            declared_len: 200_000,
        },
    );
    server.route(
        "/reset",
        Route::Reset {
            body: Bytes::from(m.clone()),
            after: 150_000,
        },
    );
    let f = fetcher();
    for path in ["/truncated", "/reset"] {
        let e = get(&f, &server.url(path)).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Transport, "{path}: {e}");
        // Bytes reached the sink, so the attempt cannot be repeated into it.
        assert!(
            e.to_string()
                .starts_with("wasm module download failed after 1 attempts"),
            "{path}: {e}"
        );
        assert_eq!(server.hits(path), 1, "{path}");
    }
    // Failing before any module byte arrived is retried.
    server.route(
        "/early",
        Route::Reset {
            body: Bytes::from(m.clone()),
            after: 0,
        },
    );
    let e = get(&f, &server.url("/early")).await.unwrap_err();
    assert!(
        e.to_string()
            .starts_with("wasm module download failed after 5 attempts"),
        "{e}"
    );
    assert_eq!(server.hits("/early"), 5);
}

#[tokio::test]
async fn redirects_are_followed_within_bounds() {
    let server = TestServer::start(ServerOptions::plain());
    let m = sample_module(1_000, 9);
    server.route("/m.wasm", Route::bytes(m.clone()));
    server.route("/r1", Route::redirect("/r2"));
    server.route("/r2", Route::redirect(server.url("/m.wasm")));
    assert_eq!(get(&fetcher(), &server.url("/r1")).await.unwrap(), m);
    assert_eq!(server.hits("/r2"), 1);

    server.route("/loop", Route::redirect("/loop"));
    let e = get(&fetcher(), &server.url("/loop")).await.unwrap_err();
    assert!(matches!(e, Error::Blocked { .. }), "{e}");
    assert!(e.to_string().contains("more than 10 redirects"), "{e}");
    assert_eq!(server.hits("/loop"), 11);
    let few = builder().max_redirects(1).build().unwrap();
    assert!(get(&few, &server.url("/r1")).await.is_err());
}

#[tokio::test]
async fn the_ssrf_guard_refuses_before_connecting() {
    let server = TestServer::start(ServerOptions::plain());
    server.route(
        "/meta",
        Route::redirect("http://169.254.169.254/latest/meta-data/"),
    );
    server.route("/alibaba", Route::redirect("http://100.100.100.200/"));
    server.route(
        "/mapped",
        Route::redirect("http://[::ffff:169.254.169.254]/"),
    );
    let f = fetcher();
    for path in ["/meta", "/alibaba", "/mapped"] {
        let e = get(&f, &server.url(path)).await.unwrap_err();
        assert!(matches!(e, Error::Blocked { .. }), "{path}: {e}");
        assert_eq!(e.kind(), ErrorKind::Blocked);
        assert!(e.to_string().starts_with("refused to fetch http://"), "{e}");
        assert_eq!(server.hits(path), 1, "{path}: not retried");
    }
    let e = get(&f, &server.url("/meta")).await.unwrap_err();
    assert!(e.to_string().contains("169.254.169.254"), "{e}");
    assert!(e.to_string().contains("link-local"), "{e}");

    // An operator CIDR covering loopback refuses the test server itself.
    server.route("/m.wasm", Route::bytes(sample_module(100, 10)));
    let blocked = builder().blocked_cidrs(["127.0.0.0/8"]).build().unwrap();
    let e = get(&blocked, &server.url("/m.wasm")).await.unwrap_err();
    assert!(matches!(e, Error::Blocked { .. }), "{e}");
    assert!(e.to_string().contains("127.0.0.0/8"), "{e}");
    assert_eq!(server.hits("/m.wasm"), 0);

    // So does switching loopback off, also for names that resolve to it.
    let no_loopback = builder().allow_loopback(false).build().unwrap();
    let by_name = format!("http://localhost:{}/m.wasm", server.addr().port());
    for url in [server.url("/m.wasm"), by_name] {
        let e = get(&no_loopback, &url).await.unwrap_err();
        assert!(matches!(e, Error::Blocked { .. }), "{e}");
    }
    assert_eq!(server.hits("/m.wasm"), 0);
}

#[tokio::test]
async fn https_never_redirects_down_to_http() {
    let plain = TestServer::start(ServerOptions::plain());
    plain.route("/m.wasm", Route::bytes(sample_module(100, 11)));
    let tls = TestServer::start(ServerOptions::tls());
    tls.route("/down", Route::redirect(plain.url("/m.wasm")));
    let f = builder().insecure_hosts(["*"]).build().unwrap();
    let e = get(&f, &tls.url("/down")).await.unwrap_err();
    assert!(matches!(e, Error::Blocked { .. }), "{e}");
    assert!(e.to_string().contains("from https down to http"), "{e}");
    assert_eq!(plain.hits("/m.wasm"), 0);
    // http -> https is fine.
    let m = sample_module(100, 12);
    tls.route("/m.wasm", Route::bytes(m.clone()));
    plain.route("/up", Route::redirect(tls.url("/m.wasm")));
    assert_eq!(get(&f, &plain.url("/up")).await.unwrap(), m);
}

#[tokio::test]
async fn credentials_are_sent_but_never_shown() {
    let server = TestServer::start(ServerOptions::plain());
    let m = sample_module(100, 13);
    server.route("/m.wasm", Route::bytes(m.clone()));
    let port = server.addr().port();
    let url = format!("http://user:hunter2@127.0.0.1:{port}/m.wasm?sig=s3cr3t");
    assert_eq!(get(&fetcher(), &url).await.unwrap(), m);
    let seen = &server.requests("/m.wasm")[0];
    // base64("user:hunter2")
    assert_eq!(seen.headers["authorization"], "Basic dXNlcjpodW50ZXIy");
    assert_eq!(seen.uri.query(), Some("sig=s3cr3t"));

    // Not forwarded to another origin (localhost is not 127.0.0.1).
    server.route(
        "/away",
        Route::redirect(format!("http://localhost:{port}/m.wasm")),
    );
    let url = format!("http://user:hunter2@127.0.0.1:{port}/away");
    assert_eq!(get(&fetcher(), &url).await.unwrap(), m);
    assert!(
        server.requests("/away")[0]
            .headers
            .contains_key("authorization")
    );
    assert!(
        !server.requests("/m.wasm")[1]
            .headers
            .contains_key("authorization")
    );

    server.route("/gone", Route::Status(404));
    let url = format!("http://user:hunter2@127.0.0.1:{port}/gone?sig=s3cr3t");
    let e = get(&fetcher(), &url).await.unwrap_err();
    for shown in [e.to_string(), format!("{e:?}")] {
        assert!(
            !shown.contains("hunter2") && !shown.contains("s3cr3t"),
            "{shown}"
        );
    }
    let f = fetcher();
    assert!(!format!("{f:?}").contains("hunter2"));
}

#[tokio::test]
async fn foreign_schemes_are_refused() {
    let f = fetcher();
    let req = request("oci://127.0.0.1:9/a/b:v1");
    let e = f.fetch(&req, &mut Vec::new()).await.unwrap_err();
    assert!(matches!(e, Error::UnsupportedScheme { .. }), "{e}");
    assert!(matches!(
        f.resolve(&req).await,
        Err(Error::UnsupportedScheme { .. })
    ));
}

#[tokio::test]
async fn conformance_plain_and_tar_gz() {
    let server = TestServer::start(ServerOptions::plain());
    let m = sample_module(200_000, 14);
    server.route("/m.wasm", Route::bytes(m.clone()));
    server.route("/m.tar.gz", Route::bytes(plugin_tar_gz(&m)));
    let f = fetcher();
    for path in ["/m.wasm", "/m.tar.gz"] {
        let fx = Fixture::new(ModuleUrl::parse(&server.url(path)).unwrap(), m.clone());
        run_all(&f, &fx).await.unwrap();
    }
    let tls = TestServer::start(ServerOptions::tls());
    tls.route(
        "/m.wasm",
        Route::Generated {
            size: 3 << 20,
            seed: 15,
        },
    );
    let f = builder()
        .ca_pem(tls.ca_pem().unwrap().into_bytes())
        .build()
        .unwrap();
    let fx = Fixture::new(
        ModuleUrl::parse(&tls.url("/m.wasm")).unwrap(),
        sample_module(3 << 20, 15),
    );
    run_all(&f, &fx).await.unwrap();
}
