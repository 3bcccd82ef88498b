//! # wasm-cache (the command)
//!
//! The operator's and script's view of the `wasm-cache` crate:
//!
//! ```text
//! wasm-cache [--dir DIR] [-v] fetch URL [--sha256 HEX] [--policy unspecified|if-not-present|always]
//!            [--resource-name NAME] [--resource-version V] [--timeout 30s]
//!            [--pull-secret FILE] [--insecure-registry HOST[:PORT]]... [--ca-file PEM]
//!            [--max-size BYTES]
//! wasm-cache [--dir DIR] list [--json]
//! wasm-cache [--dir DIR] purge [--expiry 24h] [--max-bytes N]
//! wasm-cache [--dir DIR] verify [--repair]
//! ```
//!
//! `fetch` prints exactly one line on stdout, the absolute path of the verified
//! module, and exits 0; on failure it prints `error: <message>` and its causes
//! on stderr, nothing on stdout, and exits 1. State (checksum records,
//! resource versions, last use) persists in the directory, so the pull-policy
//! rules hold across invocations. `--dir` defaults to `$WASM_CACHE_DIR`, else
//! `$XDG_CACHE_HOME/wasm-cache`, else `~/.cache/wasm-cache`.
//!
//! `list --json` prints one JSON document, stable across versions (fields are
//! only ever added):
//!
//! ```text
//! {"dir": "/abs/dir", "modules": [{"name": "oci://ghcr.io/org/filter",
//!   "checksum": "<64 hex>", "sha256": "<64 hex of the file>", "path": "/abs/dir/<hex>.wasm",
//!   "size": 1234, "last_use": "2026-11-25T03:21:00Z", "last_use_unix_ms": 1795000000000,
//!   "urls": ["oci://ghcr.io/org/filter:v1"]}]}
//! ```
//!
//! `checksum` is the key's checksum (the manifest digest for OCI, the module's
//! hash otherwise); `sha256` is the hash of the file. URLs are redacted
//! (no user-info, no query).
//!
//! Exit codes: 0 success; 1 failure (fetch failed, corrupt modules found by
//! `verify` without `--repair`); 2 bad usage.

mod progress;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use wasm_cache::{
    Cache, CacheBuilder, GetRequest, HttpFetcher, OciFetcher, PullPolicy, PullSecret, Scheme,
};

#[derive(Parser, Debug)]
#[command(
    name = "wasm-cache",
    version,
    about = "Fetch, verify and cache WebAssembly modules"
)]
struct Cli {
    /// Cache directory [default: $WASM_CACHE_DIR, else $XDG_CACHE_HOME/wasm-cache, else ~/.cache/wasm-cache]
    #[arg(long, global = true)]
    dir: Option<PathBuf>,
    /// More logging on stderr (-v info, -vv debug, -vvv trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Fetch a module (or find it in the cache) and print its local path.
    Fetch(FetchArgs),
    /// List cached modules.
    List {
        /// Print JSON (see the documentation for the schema).
        #[arg(long)]
        json: bool,
    },
    /// Remove modules now: those idle longer than the expiry, then least
    /// recently used ones above the byte budget.
    Purge {
        /// Remove modules not used for this long.
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        expiry: Duration,
        /// Keep at most this many bytes of modules.
        #[arg(long)]
        max_bytes: Option<u64>,
    },
    /// Re-hash every module and report those whose content does not match.
    Verify {
        /// Remove modules that do not match.
        #[arg(long)]
        repair: bool,
    },
}

#[derive(Args, Debug)]
struct FetchArgs {
    /// http://, https:// or oci://registry/repo[:tag|@sha256:HEX]
    url: String,
    /// Expected sha256 (module for http, manifest for OCI), bare or sha256:-prefixed.
    #[arg(long)]
    sha256: Option<String>,
    /// Pull policy for URLs without a checksum.
    #[arg(long, default_value = "unspecified")]
    policy: PullPolicy,
    /// Name of the resource asking (drives the pull policy with --resource-version).
    #[arg(long, default_value = "")]
    resource_name: String,
    /// Version of the resource asking.
    #[arg(long, default_value = "")]
    resource_version: String,
    /// Bound on the whole fetch.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Docker config.json with registry credentials (never printed).
    #[arg(long)]
    pull_secret: Option<PathBuf>,
    /// Registry or host reached without TLS verification (plain HTTP allowed for registries); `*` for all.
    #[arg(long = "insecure-registry")]
    insecure_registries: Vec<String>,
    /// Extra PEM bundle of trusted CAs.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Largest module accepted, in bytes (after unboxing).
    #[arg(long, default_value_t = wasm_cache_core::DEFAULT_MAX_MODULE_SIZE)]
    max_size: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.verbose);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&e),
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => fail(e.as_ref()),
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// `error: <message>` and every cause, on stderr; exit 1.
fn fail(e: &(dyn std::error::Error + 'static)) -> ExitCode {
    let mut msg = format!("error: {e}");
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        // thiserror's transparent and "last error:" messages already include
        // their cause; do not print it twice.
        if !msg.contains(&text) {
            msg.push_str(&format!("\n  caused by: {text}"));
        }
        source = s.source();
    }
    eprintln!("{msg}");
    ExitCode::FAILURE
}

fn init_tracing(verbose: u8) {
    let level = match verbose {
        0 => return,
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn default_dir() -> Result<PathBuf, BoxError> {
    if let Some(d) = std::env::var_os("WASM_CACHE_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d).join("wasm-cache"));
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".cache").join("wasm-cache")),
        None => Err("no cache directory: pass --dir or set WASM_CACHE_DIR".into()),
    }
}

fn absolute(dir: &Path) -> Result<PathBuf, BoxError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("creating cache directory {}: {e}", dir.display()))?;
    Ok(std::fs::canonicalize(dir)
        .map_err(|e| format!("resolving cache directory {}: {e}", dir.display()))?)
}

/// A cache for one command: no background purge (the command purges when
/// asked) and no fetchers unless the command adds the one it needs.
fn builder(dir: &Path) -> CacheBuilder {
    Cache::builder(dir)
        .background_purge(false)
        .default_fetchers(false)
}

async fn run(cli: Cli) -> Result<ExitCode, BoxError> {
    let dir = match &cli.dir {
        Some(d) => d.clone(),
        None => default_dir()?,
    };
    let dir = absolute(&dir)?;
    match cli.command {
        Command::Fetch(args) => fetch(&dir, args).await,
        Command::List { json } => list(&dir, json).await,
        Command::Purge { expiry, max_bytes } => purge(&dir, expiry, max_bytes).await,
        Command::Verify { repair } => verify(&dir, repair).await,
    }
}

async fn fetch(dir: &Path, args: FetchArgs) -> Result<ExitCode, BoxError> {
    let secret = match &args.pull_secret {
        Some(p) => {
            Some(PullSecret::new(std::fs::read(p).map_err(|e| {
                format!("reading pull secret {}: {e}", p.display())
            })?))
        }
        None => None,
    };
    // Only the fetcher this URL needs (building one loads trust roots), wrapped
    // in a progress layer (a no-op unless stderr is a terminal). A URL that
    // does not parse gets none, and the cache reports the reference's error.
    let mut cache = builder(dir).max_module_size(args.max_size);
    match wasm_cache_core::ModuleUrl::parse(&args.url).map(|u| u.scheme()) {
        Ok(Scheme::Http | Scheme::Https) => {
            let mut http =
                HttpFetcher::builder().insecure_hosts(args.insecure_registries.iter().cloned());
            if let Some(ca) = &args.ca_file {
                http = http.ca_file(ca);
            }
            let http: Arc<dyn wasm_cache::Fetcher> =
                Arc::new(progress::Progress::new(http.build()?));
            cache = cache
                .fetcher(Scheme::Http, Arc::clone(&http))
                .fetcher(Scheme::Https, http);
        }
        Ok(Scheme::Oci) => {
            let mut oci =
                OciFetcher::builder().insecure_registries(args.insecure_registries.iter().cloned());
            if let Some(ca) = &args.ca_file {
                oci = oci.ca_file(ca);
            }
            cache = cache.fetcher(Scheme::Oci, Arc::new(progress::Progress::new(oci.build()?)));
        }
        Err(_) => {}
    }
    let cache = cache.build().await?;
    let mut req = GetRequest::new(args.url)
        .resource(args.resource_name, args.resource_version)
        .timeout(args.timeout)
        .pull_policy(args.policy);
    if let Some(sum) = args.sha256 {
        req = req.checksum(sum);
    }
    if let Some(s) = secret {
        req = req.pull_secret(s);
    }
    let result = cache.get(&req).await;
    // Persist records and last use whatever happened.
    let closed = cache.shutdown().await;
    let path = result?;
    closed?;
    println!("{}", path.display());
    Ok(ExitCode::SUCCESS)
}

#[derive(Serialize)]
struct ListJson {
    dir: String,
    modules: Vec<ModuleJson>,
}

#[derive(Serialize)]
struct ModuleJson {
    name: String,
    checksum: String,
    sha256: String,
    path: String,
    size: u64,
    last_use: String,
    last_use_unix_ms: u64,
    urls: Vec<String>,
}

async fn list(dir: &Path, json: bool) -> Result<ExitCode, BoxError> {
    let cache = builder(dir).build().await?;
    let modules: Vec<ModuleJson> = cache
        .entries()
        .into_iter()
        .map(|e| ModuleJson {
            name: wasm_cache_core::redact_url(&e.key.name),
            checksum: e.key.checksum.to_hex(),
            sha256: e.content.to_hex(),
            path: cache.module_path(&e.content).display().to_string(),
            size: e.size,
            last_use: humantime::format_rfc3339_seconds(e.last_use.to_system_time()).to_string(),
            last_use_unix_ms: e.last_use.0,
            urls: e
                .urls
                .iter()
                .map(|u| wasm_cache_core::redact_url(u))
                .collect(),
        })
        .collect();
    cache.shutdown().await?;
    if json {
        let doc = ListJson {
            dir: dir.display().to_string(),
            modules,
        };
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<64}  {:>10}  {:<20}  URLS",
        "CHECKSUM", "SIZE", "LAST USE"
    );
    for m in &modules {
        println!(
            "{:<64}  {:>10}  {:<20}  {}",
            m.checksum,
            m.size,
            m.last_use,
            if m.urls.is_empty() {
                m.name.clone()
            } else {
                m.urls.join(", ")
            }
        );
    }
    eprintln!("{} module(s) in {}", modules.len(), dir.display());
    Ok(ExitCode::SUCCESS)
}

async fn purge(dir: &Path, expiry: Duration, max_bytes: Option<u64>) -> Result<ExitCode, BoxError> {
    let cache = builder(dir)
        .expiry(expiry)
        .max_bytes(max_bytes)
        .build()
        .await?;
    let report = cache.purge().await?;
    cache.shutdown().await?;
    println!(
        "removed {} expired and {} evicted module entries, {} files; {} removal failures",
        report.expired.len(),
        report.evicted.len(),
        report.files_removed,
        report.failures
    );
    Ok(if report.failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn verify(dir: &Path, repair: bool) -> Result<ExitCode, BoxError> {
    let cache = builder(dir).build().await?;
    let report = cache.verify(repair).await?;
    cache.shutdown().await?;
    for m in &report.mismatched {
        let action = if report.removed.contains(&m.digest) {
            "removed"
        } else {
            "corrupt"
        };
        println!("{action}: {}: {}", m.path.display(), m.reason);
    }
    println!(
        "verified {} modules: {} ok, {} corrupt, {} removed",
        report.ok.len() + report.mismatched.len(),
        report.ok.len(),
        report.mismatched.len(),
        report.removed.len()
    );
    let unrepaired = report.mismatched.len() - report.removed.len();
    Ok(if unrepaired == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
