//! `cargo xtask demo`: the main job end to end, offline, on loopback.
//!
//! Starts a real `docker-registry` and an HTTP server on 127.0.0.1, publishes
//! a sample module in every supported layout, then runs the `wasm-cache`
//! command (path in `$WASM_CACHE_BIN`) twice per URL against a fresh cache
//! directory: the first run is a miss that downloads, the second a hit that
//! makes no upstream request. Every result is checked (bytes, file name,
//! request counts); the process exits non-zero if anything is off. Everything
//! it started is stopped on exit.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use wasm_cache_testkit::http::{Route, ServerOptions, TestServer};
use wasm_cache_testkit::images::{
    Platform, push_cncf_artifact, push_docker_image, push_index, push_oci_image, push_solo_artifact,
};
use wasm_cache_testkit::modules::{gzip, plugin_tar_gz, sample_module, sha256_hex, tar};
use wasm_cache_testkit::registry::{Registry, RegistryKind};

struct Case {
    label: &'static str,
    url: String,
    module: Vec<u8>,
    upstream: Upstream,
}

enum Upstream {
    Http(String),
    Registry,
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let cli = PathBuf::from(
        std::env::var_os("WASM_CACHE_BIN")
            .ok_or("WASM_CACHE_BIN must name the wasm-cache binary")?,
    );
    println!("Starting a docker-registry and an HTTP server on 127.0.0.1 (no outside network)...");
    let registry = Registry::start(RegistryKind::Plain);
    let server = TestServer::start(ServerOptions::plain());
    let rt = tokio::runtime::Runtime::new().map_err(|e| format!("starting a runtime: {e}"))?;
    let mut cases = Vec::new();

    // HTTP: the module plain and in every box.
    let m = sample_module(300_000, 1);
    for (label, path, body) in [
        ("http plain", "/filter.wasm", m.clone()),
        ("http gzip", "/filter.wasm.gz", gzip(&m)),
        ("http tar", "/filter.tar", tar(&[("plugin.wasm", &m)])),
        ("http tar.gz", "/filter.tar.gz", plugin_tar_gz(&m)),
    ] {
        server.route(path, Route::bytes(body));
        cases.push(Case {
            label,
            url: server.url(path),
            module: m.clone(),
            upstream: Upstream::Http(path.to_owned()),
        });
    }

    // OCI: every layout, each with its own module.
    println!("Publishing a sample module in every layout...");
    let pushed = rt.block_on(async {
        let docker = sample_module(200_000, 2);
        let oci = sample_module(200_000, 3);
        let solo = sample_module(200_000, 4);
        let cncf = sample_module(200_000, 5);
        let wasi = sample_module(200_000, 6);
        let amd64 = sample_module(200_000, 7);
        vec![
            (
                "oci docker image",
                push_docker_image(&registry, "demo/docker", "v1", &docker).await,
                docker,
            ),
            (
                "oci image",
                push_oci_image(&registry, "demo/oci", "v1", &oci).await,
                oci,
            ),
            (
                "oci solo artifact",
                push_solo_artifact(&registry, "demo/solo", "v1", &solo).await,
                solo,
            ),
            (
                "oci cncf artifact",
                push_cncf_artifact(&registry, "demo/cncf", "v1", &cncf).await,
                cncf,
            ),
            (
                "oci image index",
                push_index(
                    &registry,
                    "demo/index",
                    "v1",
                    &[
                        (Platform::LINUX_AMD64, &amd64[..]),
                        (Platform::WASIP1, &wasi[..]),
                    ],
                )
                .await,
                wasi,
            ),
        ]
    });
    for (label, p, module) in pushed {
        cases.push(Case {
            label,
            url: p.url,
            module,
            upstream: Upstream::Registry,
        });
    }

    let dir = tempfile::tempdir().map_err(|e| format!("creating a cache directory: {e}"))?;
    println!("Cache directory: {}\n", dir.path().display());
    println!(
        "{:<18} {:<5} {:>9} {:>9}  {:<64}  URL",
        "LAYOUT", "RUN", "UPSTREAM", "TIME", "MODULE (sha256, as printed by wasm-cache fetch)"
    );
    let mut failures = Vec::new();
    for case in &cases {
        for run in ["miss", "hit"] {
            let before = upstream_count(case, &registry, &server);
            let started = Instant::now();
            let out = Command::new(&cli)
                .arg("--dir")
                .arg(dir.path())
                .args(["fetch", &case.url, "--insecure-registry", &registry.host()])
                .args(["--resource-name", "demo/plugin", "--resource-version", "1"])
                .output()
                .map_err(|e| format!("running {}: {e}", cli.display()))?;
            let took = started.elapsed();
            let requests = upstream_count(case, &registry, &server) - before;
            let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            let name = Path::new(&stdout)
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            println!(
                "{:<18} {:<5} {:>9} {:>7}ms  {:<64}  {}",
                case.label,
                run,
                requests,
                took.as_millis(),
                name,
                case.url
            );
            if !out.status.success() {
                failures.push(format!(
                    "{} ({run}): wasm-cache failed: {}",
                    case.label,
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
                continue;
            }
            let ok_bytes = std::fs::read(&stdout).is_ok_and(|b| b == case.module);
            if !ok_bytes || name != sha256_hex(&case.module) {
                failures.push(format!(
                    "{} ({run}): {stdout} does not hold the module",
                    case.label
                ));
            }
            match (run, requests) {
                ("miss", 0) => {
                    failures.push(format!("{}: the first fetch made no request", case.label))
                }
                ("hit", n) if n > 0 => {
                    failures.push(format!(
                        "{}: the second fetch made {n} upstream requests",
                        case.label
                    ));
                }
                _ => {}
            }
        }
    }
    println!("\n$ wasm-cache --dir {} list", dir.path().display());
    let list = Command::new(&cli)
        .arg("--dir")
        .arg(dir.path())
        .arg("list")
        .output()
        .map_err(|e| format!("running {}: {e}", cli.display()))?;
    print!("{}", String::from_utf8_lossy(&list.stdout));
    println!("\nStopping the registry and the HTTP server.");
    drop(server);
    drop(registry);
    if failures.is_empty() {
        println!(
            "demo: ok: {} URLs, each a miss (download) then a hit (no upstream request)",
            cases.len()
        );
        Ok(())
    } else {
        Err(failures.join("\n"))
    }
}

/// Upstream requests so far: HTTP hits of the case's path, or the registry's
/// manifest and blob reads (its access log).
fn upstream_count(case: &Case, registry: &Registry, server: &TestServer) -> usize {
    match &case.upstream {
        Upstream::Http(path) => server.hits(path),
        Upstream::Registry => registry
            .sync_requests()
            .iter()
            .filter(|r| r.is_manifest_read() || r.is_blob_get())
            .count(),
    }
}
