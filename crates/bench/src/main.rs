//! # wasm-cache-bench
//!
//! The benchmark runner behind `cargo xtask bench`: it measures each figure
//! of issue 8 against a baseline measured in the same run, prints a markdown
//! table (baseline, ours, ratio, target, met) and writes it to
//! `docs/BENCHMARKS.md` with the machine and the date.
//!
//! Design: the cold rows run the release `wasm-cache` command (path in
//! `$WASM_CACHE_BIN`) and the baseline tools (`curl`, `skopeo`) as child
//! processes against a real `docker-registry` and HTTP server on loopback,
//! timed from spawn to exit, their peak RSS read with `wait4`; the in-process
//! rows drive a real `wasm_cache::Cache`. A missed target is reported in the
//! table, never as an exit code: the runner exits non-zero only when a
//! measurement could not be made. See this crate's README for each row.
//!
//! ```text
//! wasm-cache-bench [--quick] [--runs N] [--out FILE] [--only oci,http,hit,many,flight,store]
//! ```

mod child;
mod cold;
mod inproc;
mod proxy;
mod report;
mod store;

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use report::Row;

/// What the run measures and where.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// The release `wasm-cache` command.
    pub(crate) wasm_cache: PathBuf,
    /// Timed repetitions of each cold measurement (after one warm-up).
    pub(crate) runs: usize,
    /// Size of the cold-fetch modules.
    pub(crate) cold_size: usize,
    /// Size of the peak-RSS modules.
    pub(crate) rss_size: usize,
    /// Modules in the store for the throughput and restart rows.
    pub(crate) modules: usize,
    /// Batches of the hit-path median.
    pub(crate) hit_batches: usize,
    /// Scratch directory for every output (one disk for every tool).
    pub(crate) work: PathBuf,
}

const SECTIONS: [&str; 6] = ["oci", "http", "hit", "many", "flight", "store"];

const USAGE: &str = "usage: wasm-cache-bench [--quick] [--runs N] [--out FILE] [--only SECTION,...]
  --quick     small sizes (8/32 MiB, 1,000 modules, 1 run): a smoke test; writes no file unless --out
  --runs N    timed repetitions of each cold measurement (default 5)
  --out FILE  where to write the markdown (default docs/BENCHMARKS.md)
  --only S    sections to run: oci, http, hit, many, flight, store (default all)
env: WASM_CACHE_BIN = the wasm-cache command (default target/release/wasm-cache)";

struct Args {
    quick: bool,
    runs: Option<usize>,
    out: Option<PathBuf>,
    only: Vec<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        quick: false,
        runs: None,
        out: None,
        only: SECTIONS.iter().map(|s| (*s).to_owned()).collect(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => args.quick = true,
            "--runs" => {
                let v = it.next().ok_or("--runs needs a number")?;
                let n: usize = v
                    .parse()
                    .map_err(|_| format!("--runs: not a number: {v}"))?;
                if n == 0 {
                    return Err("--runs must be at least 1".into());
                }
                args.runs = Some(n);
            }
            "--out" => args.out = Some(it.next().ok_or("--out needs a file")?.into()),
            "--only" => {
                let v = it.next().ok_or("--only needs sections")?;
                args.only = v.split(',').map(str::to_owned).collect();
                if let Some(bad) = args.only.iter().find(|s| !SECTIONS.contains(&s.as_str())) {
                    return Err(format!("--only: unknown section {bad}"));
                }
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    let raw: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if raw.first().is_some_and(|a| a == child::MEASURE) {
        return match child::measure_main(&raw[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("error: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), String> {
    let wasm_cache = std::env::var_os("WASM_CACHE_BIN")
        .map_or_else(|| PathBuf::from("target/release/wasm-cache"), PathBuf::from);
    if !wasm_cache.is_file() {
        return Err(format!(
            "the wasm-cache command {} does not exist: run `cargo xtask bench`, or build it and set WASM_CACHE_BIN",
            wasm_cache.display()
        ));
    }
    // On the disk of the checkout when there is one (tmpfs would make every
    // write, and our fsync, free); every tool writes there.
    let parent = if std::path::Path::new("target").is_dir() {
        PathBuf::from("target")
    } else {
        std::env::temp_dir()
    };
    let work = tempfile::Builder::new()
        .prefix("bench-work-")
        .tempdir_in(&parent)
        .map_err(|e| format!("creating a work directory in {}: {e}", parent.display()))?;
    let cfg = Config {
        wasm_cache,
        // Five: on this 2-core machine a single cold run of any tool moves by
        // up to a third, and a median of three still moved the raw-layer ratio
        // between 1.41x and 1.54x from one run of the bench to the next.
        runs: args.runs.unwrap_or(if args.quick { 1 } else { 5 }),
        cold_size: if args.quick { 8 << 20 } else { 64 << 20 },
        rss_size: if args.quick { 32 << 20 } else { 256 << 20 },
        modules: if args.quick { 1000 } else { 10_000 },
        hit_batches: if args.quick { 50 } else { 500 },
        work: work.path().to_path_buf(),
    };
    wasm_cache_testkit::registry::ensure_crypto_provider();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("starting the runtime: {e}"))?;
    let started = std::time::Instant::now();
    let mut rows: Vec<Row> = Vec::new();
    let mut failures = Vec::new();
    for section in &args.only {
        eprintln!("== {section}");
        let result = match section.as_str() {
            "oci" => cold::oci(&cfg, &rt),
            "http" => cold::http(&cfg),
            "hit" => inproc::hit_path(&cfg, &rt),
            "many" => inproc::many(&cfg, &rt),
            "store" => store::store(&cfg, &rt),
            _ => inproc::single_flight(&cfg, &rt),
        };
        match result {
            Ok(r) => rows.extend(r),
            Err(e) => {
                eprintln!("error: {section}: {e}");
                failures.push(format!("{section}: {e}"));
            }
        }
    }
    let table = report::table(&rows);
    println!("\n{table}");
    let met = rows.iter().filter(|r| r.met()).count();
    println!(
        "{met} of {} targets met; {:.0} s in all",
        rows.len(),
        started.elapsed().as_secs_f64()
    );
    let out = match (&args.out, args.quick) {
        (Some(o), _) => Some(o.clone()),
        (None, false) => Some(PathBuf::from("docs/BENCHMARKS.md")),
        (None, true) => None,
    };
    if let Some(out) = out {
        let doc = document(&cfg, &table, &failures);
        std::fs::write(&out, doc).map_err(|e| format!("writing {}: {e}", out.display()))?;
        println!("wrote {}", out.display());
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} section(s) could not run:\n{}",
            failures.len(),
            failures.join("\n")
        ))
    }
}

/// The first line of `cmd --version`-like output, or "unknown".
fn version(cmd: &str, arg: &str) -> String {
    Command::new(cmd)
        .arg(arg)
        .output()
        .ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned()
                + &String::from_utf8_lossy(&o.stderr);
            text.lines().next().map(str::to_owned)
        })
        .unwrap_or_else(|| "unknown".into())
}

fn first_value(file: &str, key: &str) -> String {
    std::fs::read_to_string(file)
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// How long one SHA-256 pass over `size` bytes in memory takes here (best
/// of three), the least a verified cold fetch of that size adds to a copy
/// when the bytes arrive faster than they hash: SHA-256 is one sequential
/// stream, so no second core shortens it.
fn sha256_floor(size: usize) -> String {
    let data = wasm_cache_testkit::modules::sample_module(size, 1);
    let best = (0..3)
        .map(|_| {
            let start = std::time::Instant::now();
            std::hint::black_box(wasm_cache_testkit::modules::sha256_hex(&data));
            start.elapsed()
        })
        .min()
        .unwrap_or_default();
    let secs = best.as_secs_f64().max(1e-9);
    format!(
        "{:.1} ms ({:.2} GB/s)",
        secs * 1e3,
        size as f64 / secs / 1e9
    )
}

/// What the profiles (perf, 2-core VM) showed bounds the rows that miss
/// their target; the table above is the measurement, this is the reading.
const BOUNDS: &str = "
## What bounds the missed targets

From `perf record` profiles of the runner and of `wasm-cache fetch` (details
in `crates/bench/README.md`):

- **Cold HTTP and raw OCI**: curl only copies bytes. We also SHA-256 the
  module (ring, SHA-NI), on a thread of the ingest so the reader keeps
  reading, and `fsync` it before it appears under its name (writeback is
  started every 8 MiB with `sync_file_range`, so the `fsync` waits for the
  tail only), then sync the directory and the journal once. SHA-256 is one
  sequential stream, so one pass (the header gives its time here) is a
  floor no second core shortens; in a `perf` profile of a raw-layer pull
  the hash thread was busy from the blob's first bytes to its end.
  When curl moves the bytes in less time than that pass takes (the bench's
  own HTTP server), no fetch that verifies before it publishes comes within
  1.15x of it. Against docker-registry, whose CPU shares the two cores, a
  raw-layer pull takes about 150 ms of CPU in all (ours 100-110 ms by
  `time`, the hash included, the registry's 40-50 ms from `/proc`), so on
  two cores it cannot end before about 75 ms, 1.25x-1.45x of the 52-60 ms
  curl took in the same loops; the manifest round trip, process start and
  the final `fsync` come on top.
- **Cold OCI tar+gzip**: a cold pull of a tag is two requests (manifest,
  blob; an index adds one), on our own guarded transport. A raw layer is
  hashed once (the store's hash verifies the layer digest, which is the
  module's); a tar+gzip layer twice (the compressed layer and the module,
  each on its own thread) and is also inflated (zlib-rs; the layer is
  compressed at level 6 as docker, buildkit and gzip write it, so its
  incompressible sample bytes are stored blocks). With the registry, the
  two hash passes and the reader, the pull keeps both cores about 90%
  busy: it is bound by the machine's CPU, not by waiting. curl and skopeo
  neither verify, inflate nor unpack.
- **`list` of a large cache**: opening the cache is most of it: the
  directory listing (a `statx` per module) beside the journal's decoding
  and applying (on two threads), both cores busy; then the entries are
  rendered on every core and merged as they are written. The time moves
  by a third from one run to the next on this VM. Lazy size checks (no
  `statx` per module at open) and an index snapshot beside the journal
  are the next steps (crates/bench/README.md).
";

fn document(cfg: &Config, table: &str, failures: &[String]) -> String {
    let nproc = std::thread::available_parallelism().map_or(0, std::num::NonZeroUsize::get);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown".into(), |k| k.trim().to_owned());
    let date = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
    let mut doc = format!(
        "# Benchmarks\n\n\
         Written by `cargo xtask bench` (the runner is `crates/bench`; its README\n\
         describes each row). Every figure is compared with a baseline measured in\n\
         the same run on the same machine; times are medians of {runs} runs after one\n\
         untimed warm-up, cold runs use fresh cache directories, and every tool writes\n\
         to the same disk. A missed target is reported here, not hidden.\n\n\
         - Date: {date}\n\
         - Machine: {nproc} CPUs ({cpu}), {mem} RAM, Linux {kernel}\n\
         - Baselines: {curl}; {skopeo}; registry: {registry}\n\
         - SHA-256 of one {size} MiB stream in memory (ring, as the store hashes): {hash}\n\n",
        runs = cfg.runs,
        size = cfg.cold_size >> 20,
        hash = sha256_floor(cfg.cold_size),
        cpu = first_value("/proc/cpuinfo", "model name"),
        mem = first_value("/proc/meminfo", "MemTotal"),
        curl = version("curl", "--version"),
        skopeo = version("skopeo", "--version"),
        registry = version("docker-registry", "--version"),
    );
    doc.push_str(table);
    doc.push_str(BOUNDS);
    if !failures.is_empty() {
        doc.push_str("\n## Sections that could not run\n\n");
        for f in failures {
            doc.push_str(&format!("- {}\n", f.replace('\n', " ")));
        }
    }
    doc
}
