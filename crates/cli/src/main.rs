//! # wasm-cache (the command)
//!
//! The operator's and script's view of the `wasm-cache` crate: `fetch`,
//! `resolve`, `list`, `purge`, `verify`, `completions`, and `json` (the JSON
//! documentation). docs/CLI.md is the manual: options, value syntax, logging,
//! exit status and the `--json` contract, which tests/json.rs checks every
//! command's output against.
//!
//! Exit status: 0 success; 1 fetch or verification failed; 2 usage error;
//! 3 cache directory unusable ([`EXIT_CODES`]).

/// `println!` for results on stdout, except that a closed stdout (`| head`)
/// ends the command quietly instead of panicking.
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::output::say(format_args!($($arg)*))
    };
}

mod config;
mod logging;
mod outfile;
mod output;
mod progress;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use tracing::{debug, info};
use wasm_cache::fetcher::LazyFetcher;
use wasm_cache::{
    Cache, CacheBuilder, DEFAULT_TIMEOUT, ErrorKind, GetRequest, HttpFetcher, OciFetcher,
    PullPolicy, PullSecret, Scheme,
};
use wasm_cache_core::{DEFAULT_MAX_MODULE_SIZE, redact_url};

use crate::logging::TARGET;
use crate::output::{SCHEMA, line, parse_size};

/// The exit status table, shown after every `--help`.
const EXIT_CODES: &str = "\
Exit status:
  0  success
  1  fetch or verification failed (network, registry, checksum, invalid module, corrupt modules left)
  2  usage error (bad option or value, unparseable URL, unsupported scheme, malformed checksum)
  3  cache directory unusable (permissions, lock timeout, corrupt beyond recovery)

JSON outputs: `wasm-cache json`. Manual: docs/CLI.md.";

static DEFAULT_TIMEOUT_ARG: LazyLock<String> =
    LazyLock::new(|| format!("{}s", DEFAULT_TIMEOUT.as_secs()));

static DEFAULT_MAX_SIZE_ARG: LazyLock<String> = LazyLock::new(|| {
    if DEFAULT_MAX_MODULE_SIZE.is_multiple_of(1 << 20) {
        format!("{}MiB", DEFAULT_MAX_MODULE_SIZE >> 20)
    } else {
        DEFAULT_MAX_MODULE_SIZE.to_string()
    }
});

#[derive(Parser, Debug)]
#[command(
    name = "wasm-cache",
    version,
    about = "Fetch, verify and cache WebAssembly modules",
    after_help = EXIT_CODES
)]
struct Cli {
    /// Cache directory [default: $WASM_CACHE_DIR, else $XDG_CACHE_HOME/wasm-cache, else ~/.cache/wasm-cache]
    #[arg(long, global = true, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// More logging on stderr (-v info, -vv debug, -vvv trace); RUST_LOG, when set, wins.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// No warnings, summary lines or progress on stderr (errors still show).
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Fetch a module (or find it in the cache) and print its local path.
    #[command(after_help = EXIT_CODES)]
    Fetch(FetchArgs),
    /// Print the digest a URL names now (OCI: the manifest digest; http(s): with --download).
    #[command(after_help = EXIT_CODES)]
    Resolve(ResolveArgs),
    /// List cached modules.
    #[command(after_help = EXIT_CODES)]
    List {
        /// One JSON object per module and line (see `wasm-cache json`).
        #[arg(long)]
        json: bool,
    },
    /// Remove modules now: those idle longer than the expiry, then least
    /// recently used ones above the byte budget.
    #[command(after_help = EXIT_CODES)]
    Purge {
        /// Remove modules not used for this long.
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        expiry: Duration,
        /// Keep at most this many bytes of modules (512K, 1G, 1.5GiB, ...);
        /// modules used within `--grace` are kept even above it.
        #[arg(long, value_parser = parse_size, value_name = "SIZE")]
        max_bytes: Option<u64>,
        /// Modules used this recently are never evicted for `--max-bytes`
        /// (a proxy may have just been handed their path); `--expiry` is
        /// not affected.
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        grace: Duration,
        /// Print what was removed and kept as one JSON object (see `wasm-cache json`).
        #[arg(long)]
        json: bool,
    },
    /// Re-hash every module and report those whose content does not match.
    #[command(after_help = EXIT_CODES)]
    Verify {
        /// Remove modules that do not match.
        #[arg(long)]
        repair: bool,
        /// Print the report as one JSON object (see `wasm-cache json`).
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Describe the JSON outputs of --json (also in docs/CLI.md).
    #[command(long_about = output::json_doc())]
    Json,
    /// Print the man page (roff) on stdout, or write every page
    /// (wasm-cache.1, wasm-cache-fetch.1, ...) into DIR; see `cargo xtask man`.
    #[command(hide = true)]
    Man {
        /// Where to write the pages.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
}

/// How to reach the module: shared by `fetch` and `resolve`.
#[derive(Args, Debug)]
struct NetArgs {
    /// http://, https:// or oci://registry/repo[:tag|@sha256:HEX]
    url: String,
    /// Bound on the whole fetch (connect, redirects, retries, body); the library's default too.
    #[arg(long, default_value = DEFAULT_TIMEOUT_ARG.as_str(), value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Docker config.json with registry credentials (never printed).
    #[arg(long, value_name = "FILE")]
    pull_secret: Option<PathBuf>,
    /// Registry or host reached without TLS verification (plain HTTP allowed for registries); `*` for all.
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    insecure_registries: Vec<String>,
    /// Extra PEM bundle of trusted CAs (replaces the config file's `ca_file`).
    #[arg(long, value_name = "PEM")]
    ca_file: Option<PathBuf>,
    /// A mirror of an OCI registry, asked before it (repeatable, in order; before the config file's).
    #[arg(long = "registry-mirror", value_name = "REGISTRY=URL", value_parser = config::parse_mirror_flag)]
    registry_mirrors: Vec<(String, String)>,
    /// TOML config file: mirrors per registry, insecure registries, CA file (docs/CLI.md).
    #[arg(long, env = "WASM_CACHE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Largest module accepted, after unboxing (bytes, or 512K, 1G, 1.5GiB, ...).
    #[arg(long, default_value = DEFAULT_MAX_SIZE_ARG.as_str(), value_parser = parse_size, value_name = "SIZE")]
    max_size: u64,
}

#[derive(Args, Debug)]
struct FetchArgs {
    #[command(flatten)]
    net: NetArgs,
    /// Expected sha256 (module for http, manifest for OCI), bare or sha256:-prefixed.
    #[arg(long, value_name = "HEX")]
    sha256: Option<String>,
    /// Pull policy for URLs without a checksum.
    #[arg(long, value_enum, default_value_t = Policy::Unspecified, ignore_case = true)]
    policy: Policy,
    /// Name of the resource asking (drives the pull policy with --resource-version).
    #[arg(long, default_value = "", value_name = "NAME")]
    resource_name: String,
    /// Version of the resource asking.
    #[arg(long, default_value = "", value_name = "V")]
    resource_version: String,
    /// Also write the module to PATH (atomically: the whole verified module or
    /// nothing); `-` writes the module's bytes to stdout instead of the path.
    #[arg(short, long, value_name = "PATH")]
    output: Option<PathBuf>,
    /// Print one JSON object instead of the path (see `wasm-cache json`).
    #[arg(long)]
    json: bool,
    /// Serve the module only if signed by this public key (PEM, e.g. cosign.pub); repeatable, any one suffices.
    #[arg(long = "verify-key", value_name = "FILE")]
    verify_keys: Vec<PathBuf>,
    /// With --verify-key: the cosign payload (or bundle statement) must name the repository fetched.
    #[arg(long, requires = "verify_keys")]
    require_reference: bool,
    /// With --verify-key, for http(s): the detached signature's URL (default: <url>.sig).
    #[arg(long, value_name = "URL", requires = "verify_keys")]
    signature_url: Option<String>,
}

#[derive(Args, Debug)]
struct ResolveArgs {
    #[command(flatten)]
    net: NetArgs,
    /// For http(s) URLs, which name no digest: download the module and hash it (nothing is stored).
    #[arg(long)]
    download: bool,
    /// Print one JSON object instead of the digest (see `wasm-cache json`).
    #[arg(long)]
    json: bool,
}

/// `--policy` values (the reference's pull policies).
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Policy {
    /// oci: like if-not-present, except `:latest` (like always); http(s): like always.
    Unspecified,
    /// Use the module cached for the URL, whatever the resource version.
    #[value(alias = "ifnotpresent")]
    IfNotPresent,
    /// Pull again whenever the resource version changes.
    Always,
}

impl From<Policy> for PullPolicy {
    fn from(p: Policy) -> Self {
        match p {
            Policy::Unspecified => PullPolicy::Unspecified,
            Policy::IfNotPresent => PullPolicy::IfNotPresent,
            Policy::Always => PullPolicy::Always,
        }
    }
}

/// A failed command: the exit status and what to print.
struct Failure {
    code: u8,
    error: BoxError,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Exit status 1: the fetch or verification failed.
const FAILED: u8 = 1;
/// Exit status 2: usage error.
const USAGE: u8 = 2;
/// Exit status 3: the cache directory is unusable.
const DIR: u8 = 3;

impl Failure {
    fn new(code: u8, error: impl Into<BoxError>) -> Self {
        Self {
            code,
            error: error.into(),
        }
    }
}

impl From<wasm_cache::Error> for Failure {
    fn from(e: wasm_cache::Error) -> Self {
        let code = match &e {
            wasm_cache::Error::Store(_) => DIR,
            wasm_cache::Error::Fetch(f) => match f.kind() {
                ErrorKind::InvalidInput => USAGE,
                ErrorKind::Storage => DIR,
                _ => FAILED,
            },
            _ => FAILED,
        };
        Self::new(code, e)
    }
}

impl From<wasm_cache_core::Error> for Failure {
    fn from(e: wasm_cache_core::Error) -> Self {
        wasm_cache::Error::from(e).into()
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.verbose, cli.quiet);
    let progress = !cli.quiet && std::io::stderr().is_terminal();
    // A hit the directory's hints answer needs no runtime, no fetcher and no
    // journal replay: tried before any of them is set up. On a miss, what
    // was prepared (every option read and checked) goes on to the full path.
    let plan = match &cli.command {
        Command::Fetch(args) => {
            let quick = plan_fetch(args, progress, || cache_dir(&cli))
                .and_then(|plan| Ok((quick_fetch(args, &plan)?, plan)));
            match quick {
                Ok((Some(code), _)) => return code,
                Ok((None, plan)) => Some(plan),
                Err(f) => return fail(&f),
            }
        }
        _ => None,
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&Failure::new(FAILED, e)),
    };
    // Dropping the runtime waits for the cache's background housekeeping
    // (the lookup hints' re-sync): cut short, the hints of a directory opened
    // only by short commands would never be complete.
    match rt.block_on(run(cli, progress, plan)) {
        Ok(code) => code,
        Err(f) => fail(&f),
    }
}

/// `error: <message>`, every cause and any hint, on stderr; the failure's status.
fn fail(f: &Failure) -> ExitCode {
    let e: &(dyn std::error::Error + 'static) = f.error.as_ref();
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
    if let Some(hint) = hint(&msg) {
        msg.push_str(&format!("\n  hint: {hint}"));
    }
    eprintln!("{msg}");
    ExitCode::from(f.code)
}

/// Advice for failures whose message does not say what to do.
fn hint(msg: &str) -> Option<&'static str> {
    // rustls reading a plain-HTTP answer to a TLS handshake.
    let plain_http =
        msg.contains("InvalidContentType") || msg.contains("HTTP response to an HTTPS request");
    (plain_http && !msg.contains("--insecure-registry")).then_some(
        "the server answered in plain HTTP: if it is a trusted registry, list it with --insecure-registry HOST[:PORT]; for an https:// module URL, use http://",
    )
}

/// The cache directory (`--dir`, else the default), created, absolute.
fn cache_dir(cli: &Cli) -> Result<PathBuf, Failure> {
    let dir = match &cli.dir {
        Some(d) => d.clone(),
        None => default_dir()?,
    };
    absolute(&dir)
}

fn default_dir() -> Result<PathBuf, Failure> {
    if let Some(d) = std::env::var_os("WASM_CACHE_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d).join("wasm-cache"));
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".cache").join("wasm-cache")),
        None => Err(Failure::new(
            USAGE,
            "no cache directory: pass --dir or set WASM_CACHE_DIR",
        )),
    }
}

fn absolute(dir: &Path) -> Result<PathBuf, Failure> {
    std::fs::create_dir_all(dir).map_err(|e| {
        Failure::new(
            DIR,
            format!("creating cache directory {}: {e}", dir.display()),
        )
    })?;
    std::fs::canonicalize(dir).map_err(|e| {
        Failure::new(
            DIR,
            format!("resolving cache directory {}: {e}", dir.display()),
        )
    })
}

/// A cache for one command: no background purge (the command purges when
/// asked) and no fetchers unless the command adds the one it needs.
fn builder(dir: &Path) -> CacheBuilder {
    Cache::builder(dir)
        .background_purge(false)
        .default_fetchers(false)
        // One request per process: a watch would serve no second hit, and
        // setting one up costs the process's exit 10-20 ms (the kernel waits
        // for an RCU grace period to tear the inotify instance down).
        .watch_directory(false)
}

/// Every command but the runtime-free parts of `fetch` (`plan`: what
/// [`main`] prepared for a `fetch` its quick path did not answer).
async fn run(cli: Cli, progress: bool, plan: Option<FetchPlan>) -> Result<ExitCode, Failure> {
    // Commands that need no cache directory.
    match &cli.command {
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "wasm-cache", &mut script);
            output::write_out(&script);
            return Ok(ExitCode::SUCCESS);
        }
        Command::Man { out_dir } => {
            match out_dir {
                Some(d) => clap_mangen::generate_to(Cli::command(), d),
                None => {
                    let mut page = Vec::new();
                    clap_mangen::Man::new(Cli::command())
                        .render(&mut page)
                        .map(|()| output::write_out(&page))
                }
            }
            .map_err(|e| Failure::new(FAILED, e))?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::Json => {
            say!("{}", output::json_doc());
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    let dir = cache_dir(&cli)?;
    match cli.command {
        Command::Fetch(args) => {
            let plan = match plan {
                Some(plan) => plan,
                None => plan_fetch(&args, progress, || Ok(dir))?,
            };
            fetch(args, plan).await
        }
        Command::Resolve(args) => resolve(&dir, args, progress).await,
        Command::List { json } => list(&dir, json).await,
        Command::Purge {
            expiry,
            max_bytes,
            grace,
            json,
        } => purge(&dir, expiry, max_bytes, grace, json).await,
        Command::Verify { repair, json } => verify(&dir, repair, json).await,
        Command::Completions { .. } | Command::Man { .. } | Command::Json => Ok(ExitCode::SUCCESS),
    }
}

/// The cache with the one fetcher the URL needs, built on first use (a hit
/// builds none and loads no trust roots), wrapped in the progress layer, and
/// the request's common parts.
async fn open_for(
    dir: &Path,
    net: &NetArgs,
    progress: bool,
) -> Result<(Cache, GetRequest), Failure> {
    let (fetchers, secret) = network_setup(net, progress)?;
    let cache = open_with(dir, net, fetchers).await?;
    let mut req = GetRequest::new(net.url.clone()).timeout(net.timeout);
    if let Some(s) = secret {
        req = req.pull_secret(s);
    }
    Ok((cache, req))
}

/// The cache in `dir` with `fetchers` (from [`network_setup`]).
async fn open_with(dir: &Path, net: &NetArgs, fetchers: SchemeFetchers) -> Result<Cache, Failure> {
    let mut cache = builder(dir).max_module_size(net.max_size);
    for (scheme, fetcher) in fetchers {
        cache = cache.fetcher(scheme, fetcher);
    }
    Ok(cache.build().await?)
}

/// The fetchers a URL's scheme needs, each for the scheme it serves.
type SchemeFetchers = Vec<(Scheme, Arc<dyn wasm_cache::Fetcher>)>;

/// The fetcher the URL's scheme needs (built on first use) and the pull
/// secret, with every network option checked: a bad option is a usage error
/// whether the module turns out to be cached or not.
fn network_setup(
    net: &NetArgs,
    progress: bool,
) -> Result<(SchemeFetchers, Option<PullSecret>), Failure> {
    let secret = match &net.pull_secret {
        Some(p) => Some(PullSecret::new(std::fs::read(p).map_err(|e| {
            Failure::new(USAGE, format!("reading pull secret {}: {e}", p.display()))
        })?)),
        None => None,
    };
    let config = match net.config.as_deref().filter(|p| !p.as_os_str().is_empty()) {
        Some(path) => Some((
            path,
            config::load(path).map_err(|e| Failure::new(USAGE, e))?,
        )),
        None => None,
    };
    let file = config.as_ref().map(|(p, c)| (*p, c));
    let mut insecure: Vec<String> = file
        .map(|(_, c)| c.insecure_registries.clone())
        .unwrap_or_default();
    insecure.extend(net.insecure_registries.iter().cloned());
    let ca_file = net
        .ca_file
        .clone()
        .or_else(|| file.and_then(|(_, c)| c.ca_file.clone()));
    let mut fetchers = SchemeFetchers::new();
    // A URL that does not parse gets no fetcher, and the cache reports the
    // reference's error for it.
    match wasm_cache::ModuleUrl::parse(&net.url).map(|u| u.scheme()) {
        // Each fetcher is built on first use (LazyFetcher): a hit builds none
        // and loads no trust roots. Its options are checked now all the same.
        Ok(Scheme::Http | Scheme::Https) => {
            let mut http = HttpFetcher::builder().insecure_hosts(insecure);
            if let Some(ca) = &ca_file {
                http = http.ca_file(ca);
            }
            http.check()?;
            let lazy = LazyFetcher::new("http", move || {
                Ok(Arc::new(http.clone().build()?) as Arc<dyn wasm_cache::Fetcher>)
            });
            let http: Arc<dyn wasm_cache::Fetcher> =
                Arc::new(progress::Progress::new(lazy, progress));
            fetchers.push((Scheme::Http, Arc::clone(&http)));
            fetchers.push((Scheme::Https, http));
        }
        Ok(Scheme::Oci) => {
            let mut oci = OciFetcher::builder().insecure_hosts(insecure);
            if let Some(ca) = &ca_file {
                oci = oci.ca_file(ca);
            }
            for (registry, mirror) in
                config::mirrors(file, &net.registry_mirrors).map_err(|e| Failure::new(USAGE, e))?
            {
                oci = oci.mirror(registry, mirror);
            }
            oci.check()?;
            let lazy = LazyFetcher::new("oci", move || {
                Ok(Arc::new(oci.clone().build()?) as Arc<dyn wasm_cache::Fetcher>)
            });
            fetchers.push((
                Scheme::Oci,
                Arc::new(progress::Progress::new(lazy, progress)),
            ));
        }
        Err(e) => return Err(e.into()),
        // Other schemes have no fetcher here: the cache reports the reference's error.
        Ok(_) => {}
    }
    Ok((fetchers, secret))
}

/// The info-level line every download leaves (stderr, shown by default).
fn summary(url: &str, size: u64, took: Duration, sha256: &wasm_cache::Sha256Digest) {
    info!(
        target: TARGET,
        "fetched {} {} in {:.2} s (sha256:{sha256})",
        redact_url(url),
        output::size(size),
        took.as_secs_f64()
    );
}

/// The trust policy of `--verify-key` files (each may hold several keys); a
/// missing or invalid key file is a usage error.
fn trust_policy(
    files: &[PathBuf],
    require_reference: bool,
) -> Result<Option<wasm_cache::TrustPolicy>, Failure> {
    if files.is_empty() {
        return Ok(None);
    }
    let mut keys = Vec::new();
    for file in files {
        let text = std::fs::read(file).map_err(|e| {
            Failure::new(USAGE, format!("reading public key {}: {e}", file.display()))
        })?;
        let parsed = wasm_cache::PublicKey::from_pem_many(text)
            .map_err(|e| Failure::new(USAGE, format!("public key {}: {e}", file.display())))?;
        keys.extend(parsed);
    }
    let policy = wasm_cache::TrustPolicy::new(keys).map_err(|e| Failure::new(USAGE, e))?;
    Ok(Some(policy.require_reference(require_reference)))
}

/// The request `fetch` makes (without the pull secret, read only when the
/// cache is opened).
fn fetch_request(args: &FetchArgs) -> Result<GetRequest, Failure> {
    if args.output.as_deref() == Some(Path::new("-")) && args.json {
        return Err(Failure::new(
            USAGE,
            "--json and -o - both want stdout; pick one",
        ));
    }
    let trust = trust_policy(&args.verify_keys, args.require_reference)?;
    let mut req = GetRequest::new(args.net.url.clone())
        .timeout(args.net.timeout)
        .resource(args.resource_name.clone(), args.resource_version.clone())
        .pull_policy(args.policy.into());
    if let Some(sum) = &args.sha256 {
        req = req.checksum(sum.clone());
    }
    if let Some(policy) = trust {
        req = req.verify_with(policy);
    }
    if let Some(url) = &args.signature_url {
        req = req.signature_url(url.clone());
    }
    Ok(req)
}

/// What `fetch` needs before the cache is opened, every option read and
/// checked once (a bad option fails a hit too): shared by the quick path
/// and the full one.
struct FetchPlan {
    dir: PathBuf,
    /// The request, without the pull secret (only the full path sends it).
    req: GetRequest,
    fetchers: SchemeFetchers,
    secret: Option<PullSecret>,
}

/// [`FetchPlan`] for `args`; `dir` gives the cache directory (checked last).
fn plan_fetch(
    args: &FetchArgs,
    progress: bool,
    dir: impl FnOnce() -> Result<PathBuf, Failure>,
) -> Result<FetchPlan, Failure> {
    let req = fetch_request(args)?;
    // Nothing is built or connected here: the fetchers are built on first use.
    let (fetchers, secret) = network_setup(&args.net, progress)?;
    Ok(FetchPlan {
        dir: dir()?,
        req,
        fetchers,
        secret,
    })
}

/// `fetch` answered from the directory's lookup hints (`Cache::hit_in_dir`:
/// no runtime, no journal replay, no fetcher, no trust roots), or `None`
/// for the full path.
fn quick_fetch(args: &FetchArgs, plan: &FetchPlan) -> Result<Option<ExitCode>, Failure> {
    let started = Instant::now();
    match Cache::hit_in_dir(&plan.dir, &plan.req)? {
        Some(outcome) => finish_fetch(args, &plan.req, &outcome, started.elapsed()).map(Some),
        None => Ok(None),
    }
}

/// `fetch` through an opened cache (after [`quick_fetch`] found no hit).
async fn fetch(args: FetchArgs, plan: FetchPlan) -> Result<ExitCode, Failure> {
    let FetchPlan {
        dir,
        mut req,
        fetchers,
        secret,
    } = plan;
    let started = Instant::now();
    let cache = open_with(&dir, &args.net, fetchers).await?;
    if let Some(secret) = secret {
        req = req.pull_secret(secret);
    }
    let result = cache.get_detailed(&req).await;
    // Persist records and last use whatever happened; a failure to do so
    // does not fail a fetch that succeeded (the module is in place).
    let closed = cache.shutdown().await;
    let outcome = result?;
    if let Err(e) = closed {
        tracing::warn!(target: TARGET, "saving the cache index failed: {e}");
    }
    finish_fetch(&args, &req, &outcome, started.elapsed())
}

/// What `fetch` prints (and copies) once it has the module.
fn finish_fetch(
    args: &FetchArgs,
    req: &GetRequest,
    outcome: &wasm_cache::Outcome,
    took: Duration,
) -> Result<ExitCode, Failure> {
    if outcome.cached {
        debug!(target: TARGET, "{} found in the cache", redact_url(&req.url));
    } else {
        summary(&req.url, outcome.size, took, &outcome.sha256);
    }
    if args.output.as_deref() == Some(Path::new("-")) {
        outfile::to_stdout(&outcome.path).map_err(|e| Failure::new(FAILED, e))?;
        return Ok(ExitCode::SUCCESS);
    }
    let copied = match &args.output {
        Some(dest) => {
            outfile::place(&outcome.path, dest).map_err(|e| Failure::new(FAILED, e))?;
            Some(std::path::absolute(dest).unwrap_or_else(|_| dest.clone()))
        }
        None => None,
    };
    if args.json {
        line(&output::FetchJson {
            schema: SCHEMA,
            path: outcome.path.display().to_string(),
            sha256: outcome.sha256.to_hex(),
            size: outcome.size,
            url: redact_url(&req.url),
            manifest_digest: outcome.manifest_digest.map(|d| d.to_prefixed()),
            cached: outcome.cached,
            output: copied.map(|p| p.display().to_string()),
        })
        .map_err(|e| Failure::new(FAILED, e))?;
    } else {
        say!("{}", outcome.path.display());
    }
    Ok(ExitCode::SUCCESS)
}

async fn resolve(dir: &Path, args: ResolveArgs, progress: bool) -> Result<ExitCode, Failure> {
    let (cache, req) = open_for(dir, &args.net, progress).await?;
    let started = Instant::now();
    let result = cache.resolve(&req, args.download).await;
    let took = started.elapsed();
    let _ = cache.shutdown().await;
    let Some(resolved) = result? else {
        return Err(Failure::new(
            USAGE,
            format!(
                "{} names no digest without downloading it (only OCI references are content-addressed); pass --download to hash the module",
                redact_url(&req.url)
            ),
        ));
    };
    if let Some(size) = resolved.size {
        summary(&req.url, size, took, &resolved.digest);
    }
    if args.json {
        line(&output::ResolveJson {
            schema: SCHEMA,
            url: redact_url(&req.url),
            digest: resolved.digest.to_prefixed(),
            kind: if resolved.manifest {
                "manifest"
            } else {
                "module"
            },
            size: resolved.size,
        })
        .map_err(|e| Failure::new(FAILED, e))?;
    } else {
        say!("{}", resolved.digest.to_prefixed());
    }
    Ok(ExitCode::SUCCESS)
}

async fn list(dir: &Path, json: bool) -> Result<ExitCode, Failure> {
    let cache = builder(dir).build().await?;
    // Each entry is rendered in place (no copy of the index), on every core,
    // then the sorted parts are merged as they are written: with 100,000
    // modules, a copy of every entry, serde's per-field machinery, a flush
    // per line and then a single rendering thread were most of the
    // command's time (issue 19).
    let render = output::ListRender::new(&cache, json);
    let parts = {
        // Released before the shutdown below, which writes.
        let refs = cache.entry_refs();
        output::render_list(&refs, &render)
    };
    if let Err(e) = cache.shutdown().await {
        tracing::warn!(target: TARGET, "saving the cache index failed: {e}");
    }
    let header = if json {
        String::new()
    } else {
        format!(
            "{:<64}  {:>10}  {:<20}  URLS\n",
            "CHECKSUM", "SIZE", "LAST USE"
        )
    };
    output::write_list(header.as_bytes(), &parts);
    if !json {
        let n: usize = parts.iter().map(output::ListPart::len).sum();
        eprintln!("{n} module(s) in {}", dir.display());
    }
    // The process ends next: freeing the index entry by entry only delays
    // the exit (a tenth of `list`'s time with 100,000 modules). The cache is
    // shut down; nothing of it runs on drop.
    std::mem::forget(cache);
    std::mem::forget(parts);
    Ok(ExitCode::SUCCESS)
}

async fn purge(
    dir: &Path,
    expiry: Duration,
    max_bytes: Option<u64>,
    grace: Duration,
    json: bool,
) -> Result<ExitCode, Failure> {
    let cache = builder(dir)
        .expiry(expiry)
        .max_bytes(max_bytes)
        .eviction_grace(grace)
        .build()
        .await?;
    let report = cache.purge().await?;
    let kept = cache.entries();
    if let Err(e) = cache.shutdown().await {
        tracing::warn!(target: TARGET, "saving the cache index failed: {e}");
    }
    if json {
        let removed = report
            .expired
            .iter()
            .map(|k| (k, "expired"))
            .chain(report.evicted.iter().map(|k| (k, "evicted")))
            .map(|(k, reason)| output::RemovedJson {
                name: redact_url(&k.name),
                checksum: k.checksum.to_hex(),
                reason,
            })
            .collect();
        line(&output::PurgeJson {
            schema: SCHEMA,
            removed,
            kept: kept
                .iter()
                .map(|e| output::KeptJson {
                    name: redact_url(&e.key.name),
                    checksum: e.key.checksum.to_hex(),
                    size: e.size,
                })
                .collect(),
            files_removed: report.files_removed,
            failures: report.failures,
        })
        .map_err(|e| Failure::new(FAILED, e))?;
    } else {
        say!(
            "removed {} expired and {} evicted module entries, {} files; {} kept; {} removal failures",
            report.expired.len(),
            report.evicted.len(),
            report.files_removed,
            kept.len(),
            report.failures
        );
    }
    Ok(if report.failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(FAILED)
    })
}

async fn verify(dir: &Path, repair: bool, json: bool) -> Result<ExitCode, Failure> {
    let cache = builder(dir).build().await?;
    let report = cache.verify(repair).await?;
    if let Err(e) = cache.shutdown().await {
        tracing::warn!(target: TARGET, "saving the cache index failed: {e}");
    }
    let unrepaired = report.mismatched.len() - report.removed.len();
    if json {
        line(&output::VerifyJson {
            schema: SCHEMA,
            verified: report.ok.len() + report.mismatched.len(),
            ok: report.ok.iter().map(|d| d.to_hex()).collect(),
            corrupt: report
                .mismatched
                .iter()
                .map(|m| output::CorruptJson {
                    sha256: m.digest.to_hex(),
                    path: m.path.display().to_string(),
                    reason: m.reason.clone(),
                    repaired: report.removed.contains(&m.digest),
                })
                .collect(),
            repaired: report.removed.iter().map(|d| d.to_hex()).collect(),
            missing: report.missing.iter().map(|d| d.to_hex()).collect(),
        })
        .map_err(|e| Failure::new(FAILED, e))?;
    } else {
        for m in &report.mismatched {
            let action = if report.removed.contains(&m.digest) {
                "removed"
            } else {
                "corrupt"
            };
            say!("{action}: {}: {}", m.path.display(), m.reason);
        }
        say!(
            "verified {} modules: {} ok, {} corrupt, {} removed",
            report.ok.len() + report.mismatched.len(),
            report.ok.len(),
            report.mismatched.len(),
            report.removed.len()
        );
    }
    Ok(if unrepaired == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(FAILED)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn cli_and_library_share_the_default_timeout() {
        let cli = Cli::try_parse_from(["wasm-cache", "fetch", "http://h/m.wasm"]).unwrap();
        let Command::Fetch(f) = cli.command else {
            panic!("not fetch")
        };
        assert_eq!(f.net.timeout, DEFAULT_TIMEOUT);
        assert_eq!(f.net.max_size, DEFAULT_MAX_MODULE_SIZE);
    }

    #[test]
    fn plain_http_hint() {
        assert!(hint("error: received corrupt message of type InvalidContentType").is_some());
        assert!(
            hint(
                "server gave an HTTP response to an HTTPS request; list it with --insecure-registry"
            )
            .is_none()
        );
        assert!(hint("error: connection refused").is_none());
    }
}
