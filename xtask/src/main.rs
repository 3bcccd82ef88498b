//! Project automation: `cargo xtask <command>`.
//!
//! - `ci`: what CI runs, and the README's test command: installs the services the
//!   tests need (Debian's `docker-registry`, `apache2-utils`) when missing, then
//!   runs `cargo fmt --check`, `cargo clippy --all-targets -D warnings`, rustdoc
//!   with warnings denied, `cargo package` of the published crates (so they
//!   stay publishable in form), builds the cargo-fuzz targets (`fuzz/`), and runs the
//!   whole test suite, last, so the output ends with cargo's test summary lines.
//! - `demo`: the main job end to end on this machine, with no outside network.
//! - `bench`: the benchmark table.
//! - `deps`: only the service installation step of `ci`.
//! - `man [DIR]`: writes the man pages (`wasm-cache.1`, `wasm-cache-fetch.1`,
//!   ...) and the shell completion scripts (bash, zsh, fish) into `DIR`
//!   (default `target/man`), rendered by the command itself
//!   (`wasm-cache man --out-dir`, `wasm-cache completions SHELL`), so
//!   xtask needs no clap. The CLI's tests render both on every CI run.

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let root = project_root();
    let result = match args.first().map(String::as_str) {
        Some("ci") => ci(&root),
        Some("deps") => ensure_system_packages(TEST_PACKAGES),
        Some("demo") => demo(&root),
        Some("bench") => bench(&root, &args[1..]),
        Some("man") => man(&root, args.get(1).map(PathBuf::from)),
        _ => {
            eprintln!("usage: cargo xtask <ci|demo|bench|deps|man [DIR]>");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e}");
            ExitCode::FAILURE
        }
    }
}

type Result<T = ()> = std::result::Result<T, String>;

/// The workspace `cargo xtask` was run in. `cargo run` sets
/// `CARGO_MANIFEST_DIR` for the process it starts, so this is the checkout
/// the command was typed in even when the binary it runs was built from
/// another checkout sharing the target directory (its compile-time path,
/// used only as a fallback, would point there: a bench or CI run of the
/// wrong tree).
fn project_root() -> PathBuf {
    let manifest_dir = env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest_dir
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Where cargo puts what it builds: `CARGO_TARGET_DIR` when set (a
/// relative one taken from the working directory, as cargo takes it), else
/// `<root>/target`. The binaries that `demo`, `man` and `bench` build and
/// then run are looked up there.
fn target_dir(root: &Path) -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => std::path::absolute(&d).unwrap_or_else(|_| PathBuf::from(d)),
        _ => root.join("target"),
    }
}

fn cargo() -> Command {
    Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn run(what: &str, cmd: &mut Command) -> Result {
    eprintln!("xtask: {what}");
    let status = cmd
        .status()
        .map_err(|e| format!("{what}: cannot start: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{what}: failed ({status})"))
    }
}

/// The main job end to end, offline: builds the `wasm-cache` command and the
/// demo driver (`crates/testkit/src/bin/wasm-cache-demo.rs`), which starts a
/// real registry and HTTP server on loopback, publishes a module in every
/// layout and runs the command against each (miss, then hit).
fn demo(root: &Path) -> Result {
    ensure_system_packages(TEST_PACKAGES)?;
    run(
        "cargo build (cli, demo)",
        cargo().current_dir(root).args([
            "build",
            "--locked",
            "-p",
            "wasm-cache-cli",
            "-p",
            "wasm-cache-testkit",
            "--bin",
            "wasm-cache",
            "--bin",
            "wasm-cache-demo",
        ]),
    )?;
    run(
        "demo",
        Command::new(target_dir(root).join("debug/wasm-cache-demo"))
            .current_dir(root)
            .env("WASM_CACHE_BIN", target_dir(root).join("debug/wasm-cache")),
    )
}

/// `wasm-cache(1)` and the completion scripts, from the built command.
fn man(root: &Path, out: Option<PathBuf>) -> Result {
    let out = out.unwrap_or_else(|| target_dir(root).join("man"));
    run(
        "cargo build (cli)",
        cargo().current_dir(root).args([
            "build",
            "--locked",
            "-p",
            "wasm-cache-cli",
            "--bin",
            "wasm-cache",
        ]),
    )?;
    std::fs::create_dir_all(&out).map_err(|e| format!("creating {}: {e}", out.display()))?;
    let bin = target_dir(root).join("debug/wasm-cache");
    let pages = Command::new(&bin)
        .arg("man")
        .arg("--out-dir")
        .arg(&out)
        .status()
        .map_err(|e| format!("running {}: {e}", bin.display()))?;
    if !pages.success() {
        return Err(format!("wasm-cache man: {pages}"));
    }
    eprintln!("xtask: wrote the man pages into {}", out.display());
    let outputs: [(&[&str], &str); 3] = [
        (&["completions", "bash"], "wasm-cache.bash"),
        (&["completions", "zsh"], "_wasm-cache"),
        (&["completions", "fish"], "wasm-cache.fish"),
    ];
    for (args, file) in outputs {
        let o = Command::new(&bin)
            .args(args)
            .output()
            .map_err(|e| format!("running {}: {e}", bin.display()))?;
        if !o.status.success() || o.stdout.is_empty() {
            return Err(format!(
                "wasm-cache {}: {} {}",
                args.join(" "),
                o.status,
                String::from_utf8_lossy(&o.stderr)
            ));
        }
        let path = out.join(file);
        std::fs::write(&path, &o.stdout).map_err(|e| format!("writing {}: {e}", path.display()))?;
        eprintln!("xtask: wrote {}", path.display());
    }
    Ok(())
}

/// Builds everything in release mode and runs the benchmark runner
/// (`crates/bench`), which prints the table and writes `docs/BENCHMARKS.md`.
fn bench(root: &Path, rest: &[String]) -> Result {
    ensure_system_packages(TEST_PACKAGES)?;
    ensure_system_packages(BENCH_PACKAGES)?;
    run(
        "cargo build --release (cli, bench)",
        cargo().current_dir(root).args([
            "build",
            "--release",
            "--locked",
            "-p",
            "wasm-cache-cli",
            "-p",
            "wasm-cache-bench",
        ]),
    )?;
    run(
        "benchmark runner",
        Command::new(target_dir(root).join("release/wasm-cache-bench"))
            .current_dir(root)
            .env(
                "WASM_CACHE_BIN",
                target_dir(root).join("release/wasm-cache"),
            )
            .args(rest),
    )
}

fn ci(root: &Path) -> Result {
    ensure_system_packages(TEST_PACKAGES)?;
    // CI builds from a clean clone once: incremental state would only cost
    // disk (gigabytes across ~70 test binaries) and buys nothing.
    let cargo = || {
        let mut c = cargo();
        c.current_dir(root).env("CARGO_INCREMENTAL", "0");
        c
    };
    run(
        "cargo fmt --check",
        cargo().args(["fmt", "--all", "--", "--check"]),
    )?;
    run(
        "cargo clippy",
        cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--locked",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    run(
        "cargo doc",
        cargo().env("RUSTDOCFLAGS", "-D warnings").args([
            "doc",
            "--workspace",
            "--no-deps",
            "--locked",
        ]),
    )?;
    // wasm-cache builds without its fetcher crates, for users who bring
    // their own (`default-features = false`).
    run(
        "cargo build (wasm-cache, no default features)",
        cargo().args([
            "build",
            "-p",
            "wasm-cache",
            "--no-default-features",
            "--locked",
        ]),
    )?;
    // The library crates stay publishable in form (metadata, no versioned
    // dependency on an unpublished crate, every file they need inside them).
    // `--allow-dirty` because this checks the manifests, not git's state.
    run(
        "cargo package (published crates)",
        cargo().args([
            "package",
            "--workspace",
            "--exclude",
            "wasm-cache-bench",
            "--exclude",
            "wasm-cache-testkit",
            "--exclude",
            "wasm-cache-tests",
            "--exclude",
            "wasm-cache-downstream",
            "--exclude",
            "xtask",
            "--no-verify",
            "--allow-dirty",
            "--locked",
        ]),
    )?;
    // The cargo-fuzz targets are not run in CI, but they must build (fuzz/ is
    // its own workspace, on the pinned stable toolchain: libfuzzer-sys builds there).
    run(
        "cargo build (fuzz targets)",
        cargo().args(["build", "--manifest-path", "fuzz/Cargo.toml", "--locked"]),
    )?;
    // Last, so the output ends with cargo's test summary lines.
    run(
        "cargo test",
        cargo().args(["test", "--workspace", "--locked"]),
    )
}

/// Binaries the tests need, and the Debian package that provides each.
const TEST_PACKAGES: &[(&str, &str)] = &[
    ("docker-registry", "docker-registry"),
    ("htpasswd", "apache2-utils"),
];

/// Baselines the benchmarks compare against.
const BENCH_PACKAGES: &[(&str, &str)] = &[("skopeo", "skopeo"), ("curl", "curl")];

fn on_path(bin: &str) -> bool {
    env::var_os("PATH").is_some_and(|p| env::split_paths(&p).any(|d| d.join(bin).is_file()))
}

/// Installs missing packages with apt (idempotent: nothing happens when every
/// binary is present). Needs root, as on CI and on a fresh Debian machine.
fn ensure_system_packages(packages: &[(&str, &str)]) -> Result {
    let missing: Vec<&str> = packages
        .iter()
        .filter(|(bin, _)| !on_path(bin))
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let apt = |args: &[&str]| {
        let mut c = if is_root {
            Command::new("apt-get")
        } else {
            let mut c = Command::new("sudo");
            c.arg("apt-get");
            c
        };
        c.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        c
    };
    run(
        "apt-get update",
        apt(&["update", "-qq"]).arg("-o=Dpkg::Use-Pty=0"),
    )?;
    let mut install = apt(&["install", "-y", "-qq", "--no-install-recommends"]);
    install.args(&missing);
    run(
        &format!("apt-get install {}", missing.join(" ")),
        &mut install,
    )?;
    // The Debian package may start a system registry on :5000 where an init
    // system runs; the tests start their own on free ports and do not use it.
    let still: Vec<&str> = packages
        .iter()
        .filter(|(bin, _)| !on_path(bin))
        .map(|(b, _)| *b)
        .collect();
    if still.is_empty() {
        Ok(())
    } else {
        Err(format!("still missing after install: {}", still.join(", ")))
    }
}
