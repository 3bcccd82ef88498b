//! Crash safety end to end: a child process doing 50 pulls with the
//! `wasm-cache` command (a shell loop, one `fetch` per pull, HTTP and OCI,
//! small and 8 MiB modules) is killed with SIGKILL at seeded random points
//! (fractions of a whole round's time, measured first), several times. Afterwards every module file on disk hashes to its name,
//! `wasm-cache verify` reports 0 corrupt modules, every pull that reported
//! success is intact, the command still works on the directory, and a fresh
//! cache serves every module with the network down.

mod common;

use std::collections::BTreeMap;
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Rng, cli, cli_bin, file_sha256, module_files};
use wasm_cache::{Cache, GetRequest};
use wasm_cache_testkit::http::{Route, ServerOptions, TestServer};
use wasm_cache_testkit::images::{push_cncf_artifact, push_oci_image, push_solo_artifact};
use wasm_cache_testkit::modules::{gzip, plugin_tar_gz, sample_module, sha256_hex};
use wasm_cache_testkit::registry::{Registry, RegistryKind};

const PULLS: usize = 50;
const KILLED_ROUNDS: usize = 6;
const BIG: usize = 8 * 1024 * 1024;

/// One pull: the command's arguments, what the module must hash to, and how
/// to ask a fresh cache for it without the network.
struct Pull {
    args: Vec<String>,
    module_sha: String,
    offline: GetRequest,
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A shell loop that first purges everything (so every round downloads
/// again, and a kill can land in a purge too), then runs `order`'s pulls one
/// after the other, appending `<pull> <path>` to `log` for each that succeeds.
fn script(bin: &Path, dir: &Path, log: &Path, pulls: &[Pull], order: &[usize]) -> String {
    let mut s = format!(
        "set -u\n{} --dir {} purge --expiry 0s > /dev/null || true\n",
        quote(&bin.display().to_string()),
        quote(&dir.display().to_string()),
    );
    for &i in order {
        let args: Vec<String> = pulls[i].args.iter().map(|a| quote(a)).collect();
        s.push_str(&format!(
            "if p=$({} --dir {} fetch {} --timeout 60s); then echo \"{i} $p\" >> {}; fi\n",
            quote(&bin.display().to_string()),
            quote(&dir.display().to_string()),
            args.join(" "),
            quote(&log.display().to_string()),
        ));
    }
    s
}

/// The pulls that reported success so far: pull index -> printed path.
fn committed(log: &Path) -> BTreeMap<usize, PathBuf> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .filter_map(|l| {
            let (i, p) = l.trim_end().split_once(' ')?;
            Some((i.parse().ok()?, PathBuf::from(p)))
        })
        .collect()
}

/// Every final module file in `dir` hashes to its name.
fn assert_files_match_names(dir: &Path) {
    for hex in module_files(dir) {
        let path = dir.join(format!("{hex}.wasm"));
        assert_eq!(
            file_sha256(&path),
            hex,
            "{} does not hash to its name",
            path.display()
        );
    }
}

#[test]
fn sigkilled_pulls_never_leave_a_corrupt_module_and_lose_nothing_committed() {
    let seed = common::seed(0x00c0_ffee);
    let mut rng = Rng::new(seed);
    let bin = cli_bin();
    let server = TestServer::start(ServerOptions::plain());
    let registry = Registry::start(RegistryKind::Plain);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let host = registry.host();

    let mut pulls = Vec::new();
    for i in 0..40 {
        let (size, path) = if i % 10 == 0 {
            (BIG, format!("/big{i}.wasm"))
        } else {
            (20_000 + i * 3001, format!("/m{i}.wasm"))
        };
        let module = sample_module(size, i as u64 + 1);
        let sha = sha256_hex(&module);
        let url = server.url(&path);
        match i % 4 {
            _ if size == BIG => server.route(
                &path,
                Route::Generated {
                    size: BIG as u64,
                    seed: i as u64 + 1,
                },
            ),
            1 => server.route(&path, Route::bytes(gzip(&module))),
            2 => server.route(&path, Route::bytes(plugin_tar_gz(&module))),
            _ => server.route(&path, Route::bytes(module)),
        }
        let mut args = vec![url.clone()];
        if i % 2 == 0 {
            args.extend(["--sha256".to_owned(), sha.clone()]);
        }
        pulls.push(Pull {
            args,
            offline: GetRequest::new(url).checksum(&sha),
            module_sha: sha,
        });
    }
    for i in 0..10 {
        let size = if i == 0 { BIG } else { 30_000 + i * 4001 };
        let module = sample_module(size, 100 + i as u64);
        let repo = format!("crash/m{i}");
        let pushed = rt.block_on(async {
            match i % 3 {
                0 => push_oci_image(&registry, &repo, "v1", &module).await,
                1 => push_cncf_artifact(&registry, &repo, "v1", &module).await,
                _ => push_solo_artifact(&registry, &repo, "v1", &module).await,
            }
        });
        pulls.push(Pull {
            args: vec![
                pushed.url.clone(),
                "--insecure-registry".to_owned(),
                host.clone(),
            ],
            module_sha: sha256_hex(&module),
            offline: GetRequest::new(&pushed.digest_url),
        });
    }
    assert_eq!(pulls.len(), PULLS);

    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("cache");
    // Calibration: one whole round, not killed, timed. The kill points are
    // fractions of it, so a fast machine (whose rounds finish in well under
    // the old fixed 3 s window) is still killed mid-run.
    let log = work.path().join("calibration.log");
    let order: Vec<usize> = (0..PULLS).collect();
    let started = std::time::Instant::now();
    let calibration = Command::new("sh")
        .arg("-c")
        .arg(script(bin, &dir, &log, &pulls, &order))
        .status()
        .unwrap();
    let full_round = started.elapsed();
    assert!(calibration.success());
    assert_eq!(
        committed(&log).len(),
        PULLS,
        "the calibration round did not complete every pull"
    );
    eprintln!("calibration: a whole round takes {full_round:?}");

    let mut killed = 0;
    let mut committed_in_killed_rounds = 0;
    for round in 0..KILLED_ROUNDS {
        let log = work.path().join(format!("round{round}.log"));
        let mut order: Vec<usize> = (0..PULLS).collect();
        for k in (1..order.len()).rev() {
            order.swap(k, rng.below(k as u64 + 1) as usize);
        }
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(script(bin, &dir, &log, &pulls, &order))
            .process_group(0)
            .spawn()
            .unwrap();
        // The kill point: a seeded random moment within the first 85% of a
        // whole round's measured time, not a wait for state.
        let at = full_round.mul_f64(0.02 + rng.below(830) as f64 / 1000.0);
        std::thread::sleep(at);
        let pgid = child.id();
        let sent = Command::new("kill")
            .args(["-KILL", "--", &format!("-{pgid}")])
            .status()
            .unwrap()
            .success();
        if child.wait().unwrap().signal() == Some(9) {
            killed += 1;
        }
        let done = committed(&log);
        eprintln!(
            "round {round}: kill after {at:?} (sent: {sent}), {} pulls committed in the round",
            done.len()
        );
        committed_in_killed_rounds += done.len();
        // Straight after the crash, before any recovery: no final name holds
        // anything but its module, and every pull of the round that reported
        // success (after the round's purge) is intact at the path it printed.
        if dir.exists() {
            assert_files_match_names(&dir);
        }
        for (i, path) in &done {
            assert_eq!(
                file_sha256(path),
                pulls[*i].module_sha,
                "pull {i} at {}",
                path.display()
            );
        }
    }
    assert!(
        killed >= KILLED_ROUNDS / 2,
        "only {killed} rounds were killed mid-run"
    );
    assert!(
        committed_in_killed_rounds > 0,
        "no killed round committed a pull"
    );

    // `wasm-cache verify` (which recovers the directory first) finds nothing corrupt.
    let out = cli(&dir).arg("verify").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(" 0 corrupt, 0 removed"), "{stdout}");
    assert!(
        common::temp_files(&dir).is_empty(),
        "recovery left temporary files"
    );

    // The command still works on the directory: a full round, not killed.
    let log = work.path().join("full.log");
    let all: Vec<usize> = (0..PULLS).collect();
    let full = Command::new("sh")
        .arg("-c")
        .arg(script(bin, &dir, &log, &pulls, &all))
        .status()
        .unwrap();
    assert!(full.success());
    let done = committed(&log);
    assert!(
        all.iter().all(|i| done.contains_key(i)),
        "not every pull succeeded after the crashes"
    );
    let out = cli(&dir).arg("verify").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("verified {PULLS} modules: {PULLS} ok, 0 corrupt")),
        "{stdout}"
    );

    // A fresh cache on the directory serves every module with the network down.
    drop(server);
    drop(registry);
    rt.block_on(async {
        let cache = Cache::builder(&dir)
            .background_purge(false)
            .build()
            .await
            .unwrap();
        for (i, pull) in pulls.iter().enumerate() {
            let req = pull.offline.clone().timeout(Duration::from_secs(2));
            let path = cache
                .get(&req)
                .await
                .unwrap_or_else(|e| panic!("pull {i} is not served offline: {e}"));
            assert_eq!(file_sha256(&path), pull.module_sha, "pull {i}");
        }
        common::assert_store_consistent(&cache);
        cache.shutdown().await.unwrap();
    });
}
