//! In-process figures (rows 3, 5 and 6): the hit path, hit throughput on
//! many modules, restart, and single flight, on a real `Cache` fetching from
//! a real HTTP server on loopback.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use tokio::runtime::Runtime;
use wasm_cache::{Cache, GetRequest};
use wasm_cache_testkit::http::{Route, ServerOptions, TestServer};
use wasm_cache_testkit::modules::sample_module;

use crate::Config;
use crate::child::median;
use crate::report::{Row, Target, Value};

/// Gets per timed batch of the hit-path measurement.
const BATCH: u32 = 1000;
/// How long each throughput measurement runs.
const THROUGHPUT_FOR: Duration = Duration::from_secs(2);
/// Threads of the throughput measurement.
const THREADS: usize = 2;
/// Concurrent gets of the single-flight row.
const CONCURRENT: usize = 64;

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn fresh_dir(cfg: &Config, name: &str) -> Result<tempfile::TempDir, String> {
    tempfile::Builder::new()
        .prefix(name)
        .tempdir_in(&cfg.work)
        .map_err(|e| format!("creating a cache directory in {}: {e}", cfg.work.display()))
}

/// The floor a hit cannot go below: find the path in a map and check the
/// file is still there (one `stat`), returning an owned path as `get` does.
fn floor_hit(map: &HashMap<String, PathBuf>, url: &str) -> Option<PathBuf> {
    let path = map.get(url)?;
    std::fs::metadata(path)
        .is_ok_and(|m| m.is_file())
        .then(|| path.clone())
}

/// Median per-operation time over `batches` batches of [`BATCH`] operations.
fn per_op_median(batches: usize, mut batch: impl FnMut() -> Duration) -> Duration {
    let times: Vec<Duration> = (0..batches).map(|_| batch() / BATCH).collect();
    median(&times)
}

/// Row 3a: the median time of one `Cache::get` that hits.
pub(crate) fn hit_path(cfg: &Config, rt: &Runtime) -> Result<Vec<Row>, String> {
    let server = TestServer::start(ServerOptions::plain());
    server.route("/hit.wasm", Route::bytes(sample_module(64 * 1024, 3)));
    let url = server.url("/hit.wasm");
    let dir = fresh_dir(cfg, "hit-")?;
    let cache = rt
        .block_on(Cache::builder(dir.path()).build())
        .map_err(err)?;
    let req = GetRequest::new(url.clone());
    let path = rt.block_on(cache.get(&req)).map_err(err)?;
    let map = HashMap::from([(url.clone(), path.clone())]);
    let ours = rt.block_on(async {
        for _ in 0..20_000 {
            std::hint::black_box(cache.get(&req).await.map_err(err)?);
        }
        let mut times = Vec::with_capacity(cfg.hit_batches);
        for _ in 0..cfg.hit_batches {
            let start = Instant::now();
            for _ in 0..BATCH {
                std::hint::black_box(cache.get(&req).await.map_err(err)?);
            }
            times.push(start.elapsed() / BATCH);
        }
        Ok::<_, String>(median(&times))
    })?;
    let baseline = per_op_median(cfg.hit_batches, || {
        let start = Instant::now();
        for _ in 0..BATCH {
            std::hint::black_box(floor_hit(&map, std::hint::black_box(&url)));
        }
        start.elapsed()
    });
    if server.hits("/hit.wasm") != 1 {
        return Err(format!(
            "hit path: the module was downloaded {} times, expected once",
            server.hits("/hit.wasm")
        ));
    }
    rt.block_on(cache.shutdown()).map_err(err)?;
    Ok(vec![Row {
        figure: "hit path, median of one `Cache::get` (in process)".into(),
        baseline_name: "map lookup + `stat` of the file".into(),
        baseline: Value::Time(baseline),
        ours: Value::Time(ours),
        // Issue 19.
        target: Target::AtMost(Value::Time(Duration::from_nanos(600))),
    }])
}

/// A cache directory holding `cfg.modules` modules, fetched over HTTP.
struct Many {
    server: TestServer,
    dir: tempfile::TempDir,
    urls: Vec<String>,
}

fn populate(cfg: &Config, rt: &Runtime) -> Result<(Many, Cache, Duration), String> {
    let server = TestServer::start(ServerOptions::plain());
    let n = cfg.modules;
    let urls: Vec<String> = (0..n)
        .map(|i| {
            let path = format!("/many/{i}.wasm");
            server.route(&path, Route::bytes(sample_module(1024, 10_000 + i as u64)));
            server.url(&path)
        })
        .collect();
    let dir = fresh_dir(cfg, "many-")?;
    let start = Instant::now();
    let cache = rt
        .block_on(Cache::builder(dir.path()).build())
        .map_err(err)?;
    rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for w in 0..16 {
            let cache = cache.clone();
            let urls = urls.clone();
            tasks.spawn(async move {
                for url in urls.iter().skip(w).step_by(16) {
                    cache.get(&GetRequest::new(url.clone())).await?;
                }
                Ok::<_, wasm_cache::Error>(())
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.map_err(err)?.map_err(err)?;
        }
        Ok::<_, String>(())
    })?;
    let took = start.elapsed();
    if cache.entries().len() != n {
        return Err(format!(
            "populating: {} entries, expected {n}",
            cache.entries().len()
        ));
    }
    Ok((Many { server, dir, urls }, cache, took))
}

/// Calls `op(thread, i)` for i = 0, 1, ... until [`THROUGHPUT_FOR`] has
/// passed (checking the clock every 1024 calls); returns the count and the time.
fn timed_loop(
    t: usize,
    mut op: impl FnMut(usize, usize) -> Result<(), String>,
) -> Result<(u64, Duration), String> {
    let start = Instant::now();
    let mut i = 0usize;
    loop {
        for _ in 0..1024 {
            op(t, i)?;
            i += 1;
        }
        if start.elapsed() >= THROUGHPUT_FOR {
            return Ok((i as u64, start.elapsed()));
        }
    }
}

/// Runs `body(thread)` on [`THREADS`] threads started together; each returns
/// (operations, time). Operations per second over all threads.
fn throughput(
    body: &(dyn Fn(usize) -> Result<(u64, Duration), String> + Sync),
) -> Result<f64, String> {
    let barrier = Barrier::new(THREADS);
    let results: Vec<Result<(u64, Duration), String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    body(t)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("a thread panicked".into())))
            .collect()
    });
    let mut total = 0.0;
    for r in results {
        let (count, took) = r?;
        total += count as f64 / took.as_secs_f64();
    }
    Ok(total)
}

/// Rows 3b and 5: hit throughput on many modules with two threads, and
/// restart (open to first hit) with that many modules in the store.
pub(crate) fn many(cfg: &Config, rt: &Runtime) -> Result<Vec<Row>, String> {
    let (many, cache, took) = populate(cfg, rt)?;
    let n = many.urls.len();
    eprintln!("  populated {n} modules in {:.1} s", took.as_secs_f64());
    let reqs: Vec<GetRequest> = many
        .urls
        .iter()
        .map(|u| GetRequest::new(u.clone()))
        .collect();
    // Thread t walks the modules from its own offset with a stride prime to n.
    let pick = |t: usize, i: usize| (t * n / THREADS + i * 7919) % n;
    let handle = rt.handle().clone();
    // Each thread runs one future that loops (no `block_on` per get).
    let ours = throughput(&|t| {
        handle.block_on(async {
            let start = Instant::now();
            let mut i = 0usize;
            loop {
                for _ in 0..1024 {
                    let p = cache.get(&reqs[pick(t, i)]).await.map_err(err)?;
                    std::hint::black_box(p);
                    i += 1;
                }
                if start.elapsed() >= THROUGHPUT_FOR {
                    return Ok((i as u64, start.elapsed()));
                }
            }
        })
    })?;
    let map: HashMap<String, PathBuf> = cache
        .entries()
        .into_iter()
        .flat_map(|e| {
            let path = cache.module_path(&e.content);
            e.urls.into_iter().map(move |u| (u, path.clone()))
        })
        .collect();
    let baseline = throughput(&|t| {
        timed_loop(t, |t, i| {
            floor_hit(&map, &many.urls[pick(t, i)])
                .map(|p| drop(std::hint::black_box(p)))
                .ok_or_else(|| "baseline: a module is missing".to_owned())
        })
    })?;
    rt.block_on(cache.shutdown()).map_err(err)?;
    drop(cache);
    let mut rows = vec![Row {
        figure: format!("hits/s, {THREADS} threads, {n} cached modules (in process)"),
        baseline_name: format!("map lookup + `stat`, {THREADS} threads"),
        baseline: Value::Rate(baseline),
        ours: Value::Rate(ours),
        // Issue 19.
        target: Target::AtLeast(Value::Rate(1.2e6)),
    }];
    rows.push(restart(cfg, rt, &many, &reqs)?);
    let downloads: usize = many
        .urls
        .iter()
        .map(|u| many.server.hits(&u[u.find("/many/").unwrap_or(0)..]))
        .sum();
    if downloads != n {
        return Err(format!(
            "{downloads} downloads of {n} modules: hits were not hits"
        ));
    }
    Ok(rows)
}

/// Row 5: `Cache::builder(dir).build()` then the first `get`, which must hit.
fn restart(cfg: &Config, rt: &Runtime, many: &Many, reqs: &[GetRequest]) -> Result<Row, String> {
    let dir = many.dir.path();
    let mut ours = Vec::new();
    let mut floor = Vec::new();
    for round in 0..=cfg.runs {
        let req = &reqs[(round * 997) % reqs.len()];
        let start = Instant::now();
        let (cache, path) = rt
            .block_on(async {
                let cache = Cache::builder(dir).build().await?;
                let path = cache.get(req).await?;
                Ok::<_, wasm_cache::Error>((cache, path))
            })
            .map_err(err)?;
        let took = start.elapsed();
        std::hint::black_box(path);
        rt.block_on(cache.shutdown()).map_err(err)?;
        drop(cache);
        let start = Instant::now();
        std::hint::black_box(read_store(dir)?);
        let floor_took = start.elapsed();
        eprintln!(
            "  restart {}{:.1} ms (directory + journal read: {:.1} ms)",
            if round == 0 { "(warm-up) " } else { "" },
            took.as_secs_f64() * 1e3,
            floor_took.as_secs_f64() * 1e3
        );
        if round > 0 {
            ours.push(took);
            floor.push(floor_took);
        }
    }
    Ok(Row {
        figure: format!("restart with {} modules: open to first hit", reqs.len()),
        baseline_name: "list the directory + read the journal".into(),
        baseline: Value::Time(median(&floor)),
        ours: Value::Time(median(&ours)),
        // Issue 19 (was 200 ms, issue 8).
        target: Target::AtMost(Value::Time(Duration::from_millis(60))),
    })
}

/// The I/O a restart cannot avoid: list the directory (with each entry's
/// metadata) and read the journal.
pub(crate) fn read_store(dir: &Path) -> Result<(usize, usize), String> {
    let mut files = 0;
    for entry in std::fs::read_dir(dir).map_err(err)? {
        let entry = entry.map_err(err)?;
        std::hint::black_box(entry.metadata().map_err(err)?);
        files += 1;
    }
    let journal = std::fs::read(dir.join("index.journal")).map_err(err)?;
    Ok((files, journal.len()))
}

/// Row 6: `CONCURRENT` gets of one missing module download it once.
pub(crate) fn single_flight(cfg: &Config, rt: &Runtime) -> Result<Vec<Row>, String> {
    let server = TestServer::start(ServerOptions::plain());
    let mut worst = 0;
    for round in 0..cfg.runs {
        let path = format!("/flight-{round}.wasm");
        server.route(
            &path,
            Route::bytes(sample_module(16 << 20, 600 + round as u64)),
        );
        let url = server.url(&path);
        let dir = fresh_dir(cfg, "flight-")?;
        let cache = rt
            .block_on(Cache::builder(dir.path()).build())
            .map_err(err)?;
        let paths = rt.block_on(async {
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..CONCURRENT {
                let cache = cache.clone();
                let req = GetRequest::new(url.clone());
                tasks.spawn(async move { cache.get(&req).await });
            }
            let mut paths = Vec::new();
            while let Some(r) = tasks.join_next().await {
                paths.push(r.map_err(err)?.map_err(err)?);
            }
            Ok::<_, String>(paths)
        })?;
        if paths.len() != CONCURRENT || paths.iter().any(|p| *p != paths[0]) {
            return Err("single flight: the gets did not all return the same path".into());
        }
        rt.block_on(cache.shutdown()).map_err(err)?;
        let downloads = server.hits(&path);
        eprintln!("  single flight round {round}: {CONCURRENT} gets, {downloads} download(s)");
        worst = worst.max(downloads);
    }
    Ok(vec![Row {
        figure: format!(
            "{CONCURRENT} concurrent gets of one missing 16 MiB module: downloads (worst of {})",
            cfg.runs
        ),
        baseline_name: "one download (the ideal)".into(),
        baseline: Value::Count(1),
        ours: Value::Count(worst as u64),
        target: Target::Exactly(Value::Count(1)),
    }])
}
