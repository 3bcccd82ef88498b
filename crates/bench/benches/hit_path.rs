//! Criterion benches of the hit path (issue 8, row 3), in process:
//!
//! - `hit_path/get`: one `Cache::get` that hits (a 64 KiB module fetched once
//!   from a loopback HTTP server);
//! - `hit_path/floor`: the floor any such cache pays, a map lookup and a
//!   `stat` of the file.
//!
//! `cargo bench -p wasm-cache-bench --bench hit_path -- --noplot`. The table
//! of `cargo xtask bench` measures the same thing with its own timed loop.

#![allow(missing_docs, reason = "criterion_group! generates undocumented items")]

use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use wasm_cache::{Cache, GetRequest};
use wasm_cache_testkit::http::{Route, ServerOptions, TestServer};
use wasm_cache_testkit::modules::sample_module;

fn hit_path(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let server = TestServer::start(ServerOptions::plain());
    server.route("/hit.wasm", Route::bytes(sample_module(64 * 1024, 3)));
    let url = server.url("/hit.wasm");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let cache = rt
        .block_on(Cache::builder(dir.path()).build())
        .expect("opening the cache");
    let req = GetRequest::new(url.clone());
    let path = rt.block_on(cache.get(&req)).expect("the first get");
    let map = HashMap::from([(url.clone(), path)]);

    let mut group = c.benchmark_group("hit_path");
    group.measurement_time(Duration::from_secs(3));
    group.bench_function("get", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(cache.get(black_box(&req)).await.expect("a hit"));
                }
                start.elapsed()
            })
        });
    });
    group.bench_function("floor", |b| {
        b.iter(|| {
            let p = map.get(black_box(url.as_str())).expect("in the map");
            black_box(
                std::fs::metadata(p)
                    .is_ok_and(|m| m.is_file())
                    .then(|| p.clone()),
            )
        });
    });
    group.finish();
    assert_eq!(
        server.hits("/hit.wasm"),
        1,
        "every get after the first was a hit"
    );
    rt.block_on(cache.shutdown()).expect("shutting down");
}

criterion_group!(benches, hit_path);
criterion_main!(benches);
