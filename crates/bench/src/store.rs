//! Section `store` (issue 13): a cache of many modules shared by processes.
//!
//! - a `wasm-cache fetch` hit (a whole process) with 50,000 cached modules,
//!   median; baseline: reading the journal and `stat`ing the module in process
//!   (the least any process must do to answer from this directory);
//! - journal bytes one such hit writes; baseline and target: one record;
//! - open to first hit in process with 50,000 modules; baseline: the same
//!   journal read and `stat`;
//! - journal lines after many fetch + purge cycles of one process, against
//!   the compaction bound (twice the live records plus the slack);
//! - issue 19: open to first hit in process and `wasm-cache list --json`
//!   (whole process) with 100,000 modules; baseline: listing the directory
//!   and reading the journal.
//!
//! The directory is written directly (module files and a journal of their
//! records), as a cache that fetched them would have left it.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use tokio::runtime::Runtime;
use wasm_cache::{Cache, GetRequest};
use wasm_cache_core::{IndexEvent, ModuleKey, ModuleUrl, Sha256Digest, Timestamp};
use wasm_cache_testkit::http::{Route, ServerOptions, TestServer};
use wasm_cache_testkit::modules::{sample_module, sha256_hex};
use wasm_store_fs::Journal;

use crate::Config;
use crate::child::median;
use crate::report::{Row, Target, Value};

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Module `i` (small, unique) and its URL on a server that is never asked.
fn module(i: usize) -> (Vec<u8>, String) {
    let mut m = b"\0asm\x01\0\0\0".to_vec();
    m.extend_from_slice(&(i as u64).to_le_bytes());
    (m, format!("http://127.0.0.1:9/store/m{i}.wasm"))
}

/// A directory holding `n` modules and the journal that recorded them.
fn populate(dir: &Path, n: usize) -> Result<(), String> {
    let now = Timestamp::from_system_time(std::time::SystemTime::now());
    let mut events = Vec::with_capacity(2 * n);
    for i in 0..n {
        let (bytes, url) = module(i);
        let sha = Sha256Digest::parse(&sha256_hex(&bytes)).map_err(err)?;
        std::fs::write(dir.join(sha.file_name()), &bytes).map_err(err)?;
        let name = ModuleUrl::parse(&url).map_err(err)?.module_name();
        let key = ModuleKey::new(name, sha);
        events.push(IndexEvent::Insert {
            key,
            content: sha,
            size: bytes.len() as u64,
            url: Some(url.clone()),
            at: now,
        });
        events.push(IndexEvent::Record {
            url,
            checksum: sha,
            resource_name: String::new(),
            resource_version: String::new(),
        });
    }
    Journal::<IndexEvent>::open(dir.join("index.journal"))
        .and_then(|j| j.compact(&events))
        .map_err(err)?;
    // Written back before anything is timed: otherwise the kernel flushes
    // the fixture's tens of thousands of new files (hundreds of MB of dirty
    // pages and inodes) during the measurements, on the same two cores, and
    // every row of the section, baselines included, reads the flush.
    // (`sync -f` is coreutils' `syncfs` of the file system holding `dir`.)
    let synced = Command::new("sync")
        .arg("-f")
        .arg(dir)
        .status()
        .map_err(err)?;
    if !synced.success() {
        return Err(format!("sync -f {}: {synced}", dir.display()));
    }
    Ok(())
}

/// The floor of a hit from this directory: read the journal, `stat` the file.
fn floor(dir: &Path, i: usize) -> Result<Duration, String> {
    let start = Instant::now();
    let journal = std::fs::read(dir.join("index.journal")).map_err(err)?;
    std::hint::black_box(journal);
    let (bytes, _) = module(i);
    let name = format!("{}.wasm", sha256_hex(&bytes));
    std::fs::metadata(dir.join(name)).map_err(err)?;
    Ok(start.elapsed())
}

pub(crate) fn store(cfg: &Config, rt: &Runtime) -> Result<Vec<Row>, String> {
    let n = if cfg.modules >= 10_000 {
        50_000
    } else {
        cfg.modules
    };
    let dir = tempfile::tempdir_in(&cfg.work).map_err(err)?;
    let started = Instant::now();
    populate(dir.path(), n)?;
    eprintln!(
        "  wrote {n} modules in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let journal = dir.path().join("index.journal");

    // CLI hits.
    let runs = cfg.runs.max(1) * 3 + 2;
    let (mut ours, mut base, mut written) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..=runs {
        let i = (round * 7919) % n;
        let (bytes, url) = module(i);
        let before = std::fs::metadata(&journal).map_err(err)?.len();
        let start = Instant::now();
        let out = Command::new(&cfg.wasm_cache)
            .arg("--dir")
            .arg(dir.path())
            .args(["fetch", &url, "--sha256", &sha256_hex(&bytes)])
            .output()
            .map_err(err)?;
        let took = start.elapsed();
        if !out.status.success() {
            return Err(format!(
                "a hit failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let after = std::fs::metadata(&journal).map_err(err)?.len();
        if round > 0 {
            ours.push(took);
            base.push(floor(dir.path(), i)?);
            written.push(after.saturating_sub(before));
        }
    }
    written.sort_unstable();
    // The longest `Touch` line any of these hits could write: checksum,
    // space, JSON, newline.
    let record_len = (1..=runs)
        .map(|round| {
            let (_, url) = module((round * 7919) % n);
            let at = Timestamp::from_system_time(std::time::SystemTime::now()).0;
            let json = format!(
                "{{\"op\":\"touch\",\"key\":{{\"name\":\"{url}\",\"checksum\":\"{}\"}},\"at\":{at}}}",
                "0".repeat(64)
            );
            json.len() as u64 + 10
        })
        .max()
        .unwrap_or(0);
    let mut rows = vec![
        Row {
            figure: format!("`wasm-cache fetch` hit, {n} cached modules (whole process)"),
            baseline_name: "read the journal + `stat` the module (in process)".into(),
            baseline: Value::Time(median(&base)),
            ours: Value::Time(median(&ours)),
            target: Target::AtMost(Value::Time(Duration::from_millis(10))),
        },
        Row {
            figure: format!("journal bytes written by one CLI hit, {n} cached modules (worst)"),
            baseline_name: "one last-use record".into(),
            baseline: Value::Count(record_len),
            ours: Value::Count(*written.last().unwrap_or(&0)),
            target: Target::AtMost(Value::Count(record_len)),
        },
    ];

    // Open to first hit, in process.
    let (mut ours, mut base) = (Vec::new(), Vec::new());
    for round in 0..=cfg.runs.max(1) {
        let i = (round * 104_729) % n;
        let (bytes, url) = module(i);
        let req = GetRequest::new(url).checksum(sha256_hex(&bytes));
        let start = Instant::now();
        let cache = rt
            .block_on(async {
                let cache = Cache::builder(dir.path())
                    .background_purge(false)
                    .build()
                    .await?;
                cache.get(&req).await?;
                Ok::<_, wasm_cache::Error>(cache)
            })
            .map_err(err)?;
        let took = start.elapsed();
        rt.block_on(cache.shutdown()).map_err(err)?;
        drop(cache);
        if round > 0 {
            ours.push(took);
            base.push(floor(dir.path(), i)?);
        }
    }
    rows.push(Row {
        figure: format!("open to first hit, {n} cached modules (in process)"),
        baseline_name: "read the journal + `stat` the module".into(),
        baseline: Value::Time(median(&base)),
        ours: Value::Time(median(&ours)),
        target: Target::AtMost(Value::Time(Duration::from_millis(300))),
    });
    drop(dir);
    rows.extend(large(cfg, rt)?);
    rows.push(cycles(cfg, rt)?);
    Ok(rows)
}

/// Opens `dir` and hits module `i`, timed; the cache is shut down and
/// dropped outside the timing.
fn open_and_hit(rt: &Runtime, dir: &Path, i: usize) -> Result<Duration, String> {
    let (bytes, url) = module(i);
    let req = GetRequest::new(url).checksum(sha256_hex(&bytes));
    let start = Instant::now();
    let cache = rt
        .block_on(async {
            let cache = Cache::builder(dir).background_purge(false).build().await?;
            cache.get(&req).await?;
            Ok::<_, wasm_cache::Error>(cache)
        })
        .map_err(err)?;
    let took = start.elapsed();
    rt.block_on(cache.shutdown()).map_err(err)?;
    drop(cache);
    Ok(took)
}

/// Issue 19's large-cache rows, with ten times `cfg.modules` (100,000; 10,000
/// with `--quick`): open to first hit in process, and
/// the `wasm-cache list --json` command (a whole process, its output read
/// through a pipe). Baseline of both: listing the directory (with each
/// entry's metadata) and reading the journal, in process, the I/O neither
/// can avoid.
fn large(cfg: &Config, rt: &Runtime) -> Result<Vec<Row>, String> {
    let n = cfg.modules * 10;
    let dir = tempfile::tempdir_in(&cfg.work).map_err(err)?;
    let started = Instant::now();
    populate(dir.path(), n)?;
    eprintln!(
        "  wrote {n} modules in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let list = || -> Result<Duration, String> {
        let start = Instant::now();
        let out = Command::new(&cfg.wasm_cache)
            .arg("--dir")
            .arg(dir.path())
            .args(["list", "--json"])
            .output()
            .map_err(err)?;
        let took = start.elapsed();
        let lines = out.stdout.iter().filter(|&&b| b == b'\n').count();
        if !out.status.success() || lines != n {
            return Err(format!(
                "list printed {lines} lines for {n} modules: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(took)
    };
    let floor = || -> Result<Duration, String> {
        let start = Instant::now();
        std::hint::black_box(crate::inproc::read_store(dir.path())?);
        Ok(start.elapsed())
    };
    // The first command writes the lookup hints of the directory (written
    // without them); its time is not counted.
    let (mut open, mut listed, mut base) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..=cfg.runs.max(1) {
        let o = open_and_hit(rt, dir.path(), (round * 7919) % n)?;
        let l = list()?;
        let b = floor()?;
        eprintln!(
            "  {n} modules: open to first hit {:.1} ms, list {:.1} ms (directory + journal read: {:.1} ms){}",
            o.as_secs_f64() * 1e3,
            l.as_secs_f64() * 1e3,
            b.as_secs_f64() * 1e3,
            if round == 0 { " (warm-up)" } else { "" }
        );
        if round > 0 {
            open.push(o);
            listed.push(l);
            base.push(b);
        }
    }
    Ok(vec![
        Row {
            figure: format!("open to first hit, {n} cached modules (in process)"),
            baseline_name: "list the directory + read the journal".into(),
            baseline: Value::Time(median(&base)),
            ours: Value::Time(median(&open)),
            target: Target::AtMost(Value::Time(Duration::from_millis(600))),
        },
        Row {
            figure: format!("`wasm-cache list --json`, {n} cached modules (whole process)"),
            baseline_name: "list the directory + read the journal (in process)".into(),
            baseline: Value::Time(median(&base)),
            ours: Value::Time(median(&listed)),
            target: Target::AtMost(Value::Time(Duration::from_millis(500))),
        },
    ])
}

/// Journal lines after many fetch + purge cycles (each fetch a new module,
/// each purge removing everything idle): bounded by the compaction rule.
fn cycles(cfg: &Config, rt: &Runtime) -> Result<Row, String> {
    let n = if cfg.modules >= 10_000 {
        10_000
    } else {
        cfg.modules / 5
    };
    let dir = tempfile::tempdir_in(&cfg.work).map_err(err)?;
    let server = TestServer::start(ServerOptions::plain());
    let mut max_lines = 0u64;
    rt.block_on(async {
        let cache = Cache::builder(dir.path())
            .background_purge(false)
            .expiry(Duration::ZERO)
            .build()
            .await?;
        for i in 0..n {
            let path = format!("/cycle{i}.wasm");
            server.route(&path, Route::bytes(sample_module(64, i as u64 + 1)));
            cache.get(&GetRequest::new(server.url(&path))).await?;
            cache.purge().await?;
            let text = std::fs::read(dir.path().join("index.journal")).unwrap_or_default();
            let lines = text.iter().filter(|&&b| b == b'\n').count() as u64;
            max_lines = max_lines.max(lines);
        }
        cache.shutdown().await
    })
    .map_err(err)?;
    // With nothing live after a purge, the rule allows 2 x 0 + 64 dead lines,
    // plus the records of the one module fetched since.
    Ok(Row {
        figure: format!("most journal lines over {n} fetch + purge cycles"),
        baseline_name: "the compaction bound (2 x live + 64)".into(),
        baseline: Value::Count(64 + 3),
        ours: Value::Count(max_lines),
        target: Target::AtMost(Value::Count(64 + 3 + 3)),
    })
}
