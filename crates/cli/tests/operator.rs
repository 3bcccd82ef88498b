//! The command as operators and scripts use it (issue 16): exit codes per
//! class, `-o`, logging and warnings, the summary line, the progress bar under
//! a pseudo-terminal, sizes with units, `--policy` values, `resolve`,
//! completions and the man page. Real HTTP server and registry on 127.0.0.1.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use assert_cmd::Command;
use wasm_cache_testkit::http::{Route, ServerOptions, TestServer};
use wasm_cache_testkit::images::push_oci_image;
use wasm_cache_testkit::modules::{sample_module, sha256_hex};
use wasm_cache_testkit::registry::{Registry, RegistryKind};

fn cli(dir: &Path) -> Command {
    let mut c = Command::cargo_bin("wasm-cache").unwrap();
    c.arg("--dir")
        .arg(dir)
        .env_remove("WASM_CACHE_DIR")
        .env_remove("RUST_LOG");
    c
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

fn run(dir: &Path, args: &[&str]) -> Output {
    cli(dir).args(args).output().unwrap()
}

/// Runs and asserts the exit status; returns the output.
fn expect(code: i32, dir: &Path, args: &[&str]) -> Output {
    let o = run(dir, args);
    assert_eq!(
        o.status.code(),
        Some(code),
        "{args:?}: stdout {} stderr {}",
        stdout(&o),
        stderr(&o)
    );
    if code != 0 {
        assert!(o.stdout.is_empty(), "{args:?}: stdout {}", stdout(&o));
    }
    o
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn exit_status_per_class() {
    let s = TestServer::start(ServerOptions::plain());
    let module = sample_module(3_000, 1);
    s.route("/m.wasm", Route::bytes(module.clone()));
    s.route("/gone.wasm", Route::Status(404));
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let url = s.url("/m.wasm");

    // 0
    expect(0, d, &["fetch", &url]);
    expect(0, d, &["list"]);

    // 1: the fetch or the verification failed.
    let e = stderr(&expect(1, d, &["fetch", &s.url("/gone.wasm")]));
    assert!(e.starts_with("error: ") && e.contains("404"), "{e}");
    let e = stderr(&expect(1, d, &["fetch", &url, "--sha256", &"0".repeat(64)]));
    assert!(e.contains("which does not match"), "{e}");

    // 2: usage errors, from clap and from the values themselves.
    for args in [
        &["fetch"][..],
        &["frobnicate"],
        &["fetch", &url, "--no-such-flag"],
        &["fetch", &url, "--policy", "sometimes"],
        &["fetch", &url, "--max-size", "12Q"],
        &["fetch", &url, "--timeout", "soon"],
        &["purge", "--max-bytes", "lots"],
        &["fetch", "not a url"],
        &["fetch", "ftp://127.0.0.1/m.wasm"],
        &["fetch", &url, "--sha256", "xyz"],
        &["fetch", &url, "--pull-secret", "/nonexistent/config.json"],
        &["fetch", &url, "--ca-file", "/nonexistent/ca.pem"],
        &["resolve", &url],
        &["completions", "tcsh"],
    ] {
        let e = stderr(&expect(2, d, args));
        assert!(e.starts_with("error: "), "{args:?}: {e}");
    }
    let e = stderr(&expect(2, d, &["resolve", &url]));
    assert!(e.contains("--download"), "{e}");

    // 3: the cache directory is unusable.
    let file = d.join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let e = stderr(&expect(3, &file, &["list"]));
    assert!(e.contains("not-a-dir"), "{e}");
    expect(3, &file.join("sub"), &["fetch", &url]);
    // The journal's place is taken by a directory: beyond recovery.
    let broken = tempfile::tempdir().unwrap();
    std::fs::create_dir(broken.path().join("index.journal")).unwrap();
    let e = stderr(&expect(3, broken.path(), &["fetch", &url]));
    assert!(e.contains("index.journal"), "{e}");
    expect(3, broken.path(), &["verify"]);
}

#[test]
fn help_documents_the_exit_status_and_the_policy_values() {
    let dir = tempfile::tempdir().unwrap();
    for args in [&["--help"][..], &["fetch", "--help"], &["verify", "--help"]] {
        let o = expect(0, dir.path(), args);
        let help = stdout(&o);
        for line in [
            "0  success",
            "1  fetch or verification failed",
            "2  usage error",
            "3  cache directory unusable",
        ] {
            assert!(help.contains(line), "{args:?} lacks {line:?}: {help}");
        }
    }
    let help = stdout(&expect(0, dir.path(), &["fetch", "--help"]));
    for v in ["unspecified", "if-not-present", "always"] {
        assert!(help.contains(v), "{help}");
    }
    assert!(help.contains("[default: 60s]"), "{help}");
    let e = stderr(&expect(
        2,
        dir.path(),
        &["fetch", "http://x/m.wasm", "--policy", "sometimes"],
    ));
    assert!(
        e.contains("possible values: unspecified, if-not-present, always"),
        "{e}"
    );
}

#[test]
fn policy_values_and_kubernetes_spellings_are_accepted() {
    let s = TestServer::start(ServerOptions::plain());
    s.route("/m.wasm", Route::bytes(sample_module(2_000, 2)));
    let dir = tempfile::tempdir().unwrap();
    for p in [
        "unspecified",
        "if-not-present",
        "IfNotPresent",
        "always",
        "Always",
    ] {
        expect(0, dir.path(), &["fetch", &s.url("/m.wasm"), "--policy", p]);
    }
}

#[test]
fn sizes_take_units() {
    let s = TestServer::start(ServerOptions::plain());
    s.route("/m.wasm", Route::bytes(sample_module(40_000, 3)));
    let dir = tempfile::tempdir().unwrap();
    let url = s.url("/m.wasm");
    let e = stderr(&expect(
        1,
        dir.path(),
        &["fetch", &url, "--max-size", "32K"],
    ));
    assert!(e.contains("size limit of 32000 bytes"), "{e}");
    let e = stderr(&expect(
        1,
        dir.path(),
        &["fetch", &url, "--max-size", "32KiB"],
    ));
    assert!(e.contains("size limit of 32768 bytes"), "{e}");
    expect(0, dir.path(), &["fetch", &url, "--max-size", "1.5GiB"]);
    expect(0, dir.path(), &["fetch", &url, "--max-size", "40000"]);
    // A budget with a unit (the module is within the eviction grace, so it stays).
    let o = expect(0, dir.path(), &["purge", "--max-bytes", "1.5M"]);
    assert!(stdout(&o).contains("1 kept"), "{}", stdout(&o));
    expect(2, dir.path(), &["purge", "--max-bytes", "1.5X"]);
}

#[test]
fn purge_keeps_modules_within_the_grace_unless_told_otherwise() {
    let s = TestServer::start(ServerOptions::plain());
    let module = sample_module(20_000, 9);
    s.route("/g.wasm", Route::bytes(module.clone()));
    let dir = tempfile::tempdir().unwrap();
    let path = stdout(&expect(0, dir.path(), &["fetch", &s.url("/g.wasm")]));
    let path = PathBuf::from(path.trim());
    // Just handed out: a budget of 0 keeps it (the default 5-minute grace).
    let o = expect(0, dir.path(), &["purge", "--max-bytes", "0", "--json"]);
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["removed"].as_array().unwrap().len(), 0, "{v}");
    assert_eq!(v["kept"][0]["checksum"], sha256_hex(&module), "{v}");
    assert!(path.exists());
    // With no grace the budget evicts it.
    let o = expect(
        0,
        dir.path(),
        &["purge", "--max-bytes", "0", "--grace", "0s", "--json"],
    );
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["removed"][0]["reason"], "evicted", "{v}");
    assert_eq!(v["kept"].as_array().unwrap().len(), 0, "{v}");
    assert!(!path.exists());
    expect(2, dir.path(), &["purge", "--grace", "soon"]);
}

#[test]
fn output_file_is_written_whole_and_replaced_atomically() {
    let s = TestServer::start(ServerOptions::plain());
    let a = sample_module(100_000, 4);
    let b = sample_module(70_000, 5);
    s.route("/a.wasm", Route::bytes(a.clone()));
    s.route("/b.wasm", Route::bytes(b.clone()));
    let dir = tempfile::tempdir().unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("plugin.wasm");
    let o = expect(
        0,
        dir.path(),
        &["fetch", &s.url("/a.wasm"), "-o", out.to_str().unwrap()],
    );
    assert_eq!(std::fs::read(&out).unwrap(), a);
    // stdout still names the cached module.
    let cached = PathBuf::from(stdout(&o).trim());
    assert_eq!(std::fs::read(&cached).unwrap(), a);
    // A separate file, not a second name of the cached one.
    use std::os::unix::fs::MetadataExt;
    assert_ne!(
        std::fs::metadata(&out).unwrap().ino(),
        std::fs::metadata(&cached).unwrap().ino()
    );
    // Replaced, from the cache this time (hit), relative path too.
    let mut c = cli(dir.path());
    c.current_dir(out_dir.path())
        .args(["fetch", &s.url("/b.wasm"), "--output", "plugin.wasm"]);
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(&out).unwrap(), b);
    assert_eq!(files_in(out_dir.path()), ["plugin.wasm"]);
    // Into a missing directory: exit 1, the module stays cached.
    let e = stderr(&expect(
        1,
        dir.path(),
        &[
            "fetch",
            &s.url("/a.wasm"),
            "-o",
            out_dir.path().join("no/such/dir.wasm").to_str().unwrap(),
        ],
    ));
    assert!(e.contains("no/such"), "{e}");
}

#[test]
fn output_file_never_gets_a_partial_module_when_the_fetch_fails_midway() {
    let s = TestServer::start(ServerOptions::plain());
    let module = sample_module(2 << 20, 6);
    // The body is cut after 1 MiB of the announced 2 MiB, on every attempt.
    s.route(
        "/cut.wasm",
        Route::Truncated {
            body: module[..1 << 20].to_vec().into(),
            declared_len: module.len() as u64,
        },
    );
    s.route(
        "/reset.wasm",
        Route::Reset {
            body: module.clone().into(),
            after: 512 * 1024,
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let fresh = out_dir.path().join("fresh.wasm");
    let old = out_dir.path().join("old.wasm");
    std::fs::write(&old, b"the previous, good module").unwrap();
    for path in ["/cut.wasm", "/reset.wasm"] {
        for dest in [&fresh, &old] {
            expect(
                1,
                dir.path(),
                &[
                    "fetch",
                    &s.url(path),
                    "--timeout",
                    "10s",
                    "-o",
                    dest.to_str().unwrap(),
                ],
            );
        }
        assert!(s.hits(path) >= 2, "{path} was fetched");
    }
    assert!(!fresh.exists());
    assert_eq!(std::fs::read(&old).unwrap(), b"the previous, good module");
    // No temporary file left beside the destination, nothing in the cache.
    assert_eq!(files_in(out_dir.path()), ["old.wasm"]);
    assert!(
        !files_in(dir.path()).iter().any(|f| f.ends_with(".wasm")),
        "{:?}",
        files_in(dir.path())
    );
}

#[test]
fn output_file_does_not_write_through_a_planted_symlink() {
    let s = TestServer::start(ServerOptions::plain());
    let module = sample_module(5_000, 7);
    s.route("/m.wasm", Route::bytes(module.clone()));
    let dir = tempfile::tempdir().unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let victim = out_dir.path().join("victim");
    std::fs::write(&victim, b"do not touch").unwrap();
    let out = out_dir.path().join("plugin.wasm");
    std::os::unix::fs::symlink(&victim, &out).unwrap();
    expect(
        0,
        dir.path(),
        &["fetch", &s.url("/m.wasm"), "-o", out.to_str().unwrap()],
    );
    assert_eq!(std::fs::read(&victim).unwrap(), b"do not touch");
    assert!(!std::fs::symlink_metadata(&out).unwrap().is_symlink());
    assert_eq!(std::fs::read(&out).unwrap(), module);
}

#[test]
fn warnings_show_by_default_and_quiet_silences_them() {
    let s = TestServer::start(ServerOptions::plain());
    let module = sample_module(8_000, 8);
    s.route("/m.wasm", Route::bytes(module.clone()));
    let dir = tempfile::tempdir().unwrap();
    let url = s.url("/m.wasm");
    let args = ["fetch", &url, "--policy", "if-not-present"];
    let corrupt = |path: &str| {
        let mut bytes = std::fs::read(path).unwrap();
        bytes[100] ^= 0xff;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .unwrap();
        std::io::Write::write_all(&mut f, &bytes).unwrap();
    };
    let path = stdout(&expect(0, dir.path(), &args)).trim().to_owned();

    // A corrupted module is fetched again, and the operator is told.
    corrupt(&path);
    let o = expect(0, dir.path(), &args);
    let e = stderr(&o);
    assert!(
        e.lines()
            .any(|l| l.starts_with("warning: ") && l.contains("failed verification")),
        "{e}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), module);
    assert_eq!(s.hits("/m.wasm"), 2);

    // -q: nothing on stderr, the same result.
    corrupt(&path);
    let mut quiet = vec!["-q"];
    quiet.extend(args);
    let o = expect(0, dir.path(), &quiet);
    assert_eq!(stderr(&o), "", "quiet");
    assert_eq!(stdout(&o).trim(), path);
    assert_eq!(s.hits("/m.wasm"), 3);

    // RUST_LOG wins over -q when set. (A corrupt module, so the cache is
    // opened: a hit the lookup hints answer opens nothing to log about.)
    corrupt(&path);
    let o = cli(dir.path())
        .env("RUST_LOG", "wasm_cache=info")
        .args(&quiet)
        .output()
        .unwrap();
    assert!(o.status.success());
    assert!(stderr(&o).contains("wasm cache opened"), "{}", stderr(&o));

    // -v adds info from the library.
    corrupt(&path);
    let o = cli(dir.path()).arg("-v").args(args).output().unwrap();
    assert!(o.status.success());
    assert!(stderr(&o).contains("wasm cache opened"), "{}", stderr(&o));
    // Errors stay `error:` lines, with -q too.
    let o = expect(1, dir.path(), &["-q", "fetch", &s.url("/none.wasm")]);
    assert!(stderr(&o).starts_with("error: "), "{}", stderr(&o));
}

#[test]
fn summary_line_without_a_terminal() {
    let s = TestServer::start(ServerOptions::plain());
    let module = sample_module(3 << 20, 9);
    s.route("/m.wasm", Route::bytes(module.clone()));
    let dir = tempfile::tempdir().unwrap();
    let port = s.addr().port();
    let url = format!("http://user:hunter2@127.0.0.1:{port}/m.wasm?token=s3cr3t");
    let o = expect(0, dir.path(), &["fetch", &url]);
    let e = stderr(&o);
    let lines: Vec<&str> = e.lines().collect();
    assert_eq!(lines.len(), 1, "one summary line: {e}");
    let want = format!("fetched http://***@127.0.0.1:{port}/m.wasm?*** 3.0 MiB in ");
    assert!(lines[0].starts_with(&want), "{e}");
    assert!(
        lines[0].ends_with(&format!(" s (sha256:{})", sha256_hex(&module))),
        "{e}"
    );
    assert!(!e.contains("hunter2") && !e.contains("s3cr3t"), "{e}");
    // No progress bar drawing without a terminal.
    assert!(!e.contains('\r') && !e.contains('\x1b'), "{e:?}");
    // A hit downloads nothing and says nothing.
    let o = expect(0, dir.path(), &["fetch", &url]);
    assert_eq!(stderr(&o), "");
    // -q: no summary.
    let o = expect(
        0,
        dir.path(),
        &[
            "-q",
            "fetch",
            &url,
            "--policy",
            "always",
            "--resource-version",
            "2",
        ],
    );
    assert_eq!(stderr(&o), "");
    assert_eq!(s.hits("/m.wasm"), 2);
}

/// Runs the command with stderr on a pseudo-terminal; returns its status, its
/// stdout and everything written to the terminal.
fn run_on_pty(dir: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC).unwrap();
    grantpt(&master).unwrap();
    unlockpt(&master).unwrap();
    let name = ptsname(&master, Vec::new()).unwrap();
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(name.to_str().unwrap())
        .unwrap();
    rustix::termios::tcsetwinsize(
        &slave,
        rustix::termios::Winsize {
            ws_row: 40,
            ws_col: 160,
            ws_xpixel: 0,
            ws_ypixel: 0,
        },
    )
    .unwrap();
    let mut master = std::fs::File::from(master);
    let reader = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match master.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
                // EIO: every slave descriptor is closed (the child exited).
                Err(e) if e.raw_os_error() == Some(libc::EIO) => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => panic!("reading the pty: {e}"),
            }
        }
        String::from_utf8_lossy(&seen).into_owned()
    });
    let child = std::process::Command::new(assert_cmd::cargo::cargo_bin("wasm-cache"))
        .arg("--dir")
        .arg(dir)
        .args(args)
        .env("TERM", "xterm-256color")
        .env_remove("RUST_LOG")
        .env_remove("WASM_CACHE_DIR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(slave))
        .spawn()
        .unwrap();
    let o = child.wait_with_output().unwrap();
    let screen = reader.join().unwrap();
    (o.status.code(), stdout(&o), screen)
}

#[test]
fn progress_bar_with_total_percent_rate_and_eta_on_a_terminal() {
    let s = TestServer::start(ServerOptions::plain());
    let module = sample_module(4 << 20, 10);
    // 256 KiB of a 4 MiB module, then nothing: the bar stays up until the
    // timeout, with the total known from Content-Length.
    s.route(
        "/slow.wasm",
        Route::Stall {
            prefix: module[..256 * 1024].to_vec().into(),
            declared_len: module.len() as u64,
        },
    );
    s.route("/m.wasm", Route::bytes(module.clone()));
    let dir = tempfile::tempdir().unwrap();
    let (code, out, screen) = run_on_pty(
        dir.path(),
        &["fetch", &s.url("/slow.wasm"), "--timeout", "2s"],
    );
    assert_eq!(code, Some(1), "{screen}");
    assert!(out.is_empty());
    assert!(screen.contains("/4.00 MiB"), "total: {screen:?}");
    assert!(screen.contains("256.00 KiB/4.00 MiB"), "bytes: {screen:?}");
    assert!(screen.contains("6%"), "percent: {screen:?}");
    assert!(screen.contains("/s"), "rate: {screen:?}");
    assert!(screen.contains("ETA"), "eta: {screen:?}");
    assert!(screen.contains("error: "), "{screen:?}");

    // A complete fetch on a terminal: the path on stdout, the bar cleared,
    // the summary left.
    let (code, out, screen) = run_on_pty(dir.path(), &["fetch", &s.url("/m.wasm")]);
    assert_eq!(code, Some(0), "{screen}");
    assert!(
        out.trim()
            .ends_with(&format!("{}.wasm", sha256_hex(&module)))
    );
    assert!(screen.contains("fetched http://127.0.0.1"), "{screen:?}");

    // -q: nothing on the terminal.
    let (code, _, screen) = run_on_pty(
        dir.path(),
        &["-q", "fetch", &s.url("/slow.wasm"), "--timeout", "1s"],
    );
    assert_eq!(code, Some(1));
    assert!(!screen.contains("MiB"), "{screen:?}");
}

#[test]
fn spinner_when_the_module_size_is_unknown() {
    let s = TestServer::start(ServerOptions::plain());
    // A gzip body: its Content-Length is not the module's length.
    let z = wasm_cache_testkit::modules::gzip(&sample_module(1 << 20, 15));
    s.route(
        "/m.wasm.gz",
        Route::Stall {
            prefix: z[..z.len() / 2].to_vec().into(),
            declared_len: z.len() as u64,
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let (code, _, screen) = run_on_pty(
        dir.path(),
        &["fetch", &s.url("/m.wasm.gz"), "--timeout", "2s"],
    );
    assert_eq!(code, Some(1), "{screen}");
    assert!(screen.contains("/m.wasm.gz"), "{screen:?}");
    assert!(screen.contains("iB/s"), "rate: {screen:?}");
    assert!(
        !screen.contains("ETA") && !screen.contains('%'),
        "{screen:?}"
    );
}

#[test]
fn resolve_prints_the_digest_a_url_names_now() {
    let r = Registry::start(RegistryKind::Plain);
    let module = sample_module(20_000, 12);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let pushed = rt.block_on(push_oci_image(&r, "org/filter", "v1", &module));
    let dir = tempfile::tempdir().unwrap();
    let o = expect(
        0,
        dir.path(),
        &["resolve", &pushed.url, "--insecure-registry", &r.host()],
    );
    assert_eq!(stdout(&o).trim(), pushed.manifest_digest);
    // Nothing was downloaded or stored.
    assert!(!r.requests().iter().any(|q| q.is_blob_get()));
    assert!(!files_in(dir.path()).iter().any(|f| f.ends_with(".wasm")));
    // The tag moves: resolve follows.
    let other = sample_module(21_000, 13);
    let moved = rt.block_on(push_oci_image(&r, "org/filter", "v1", &other));
    let o = expect(
        0,
        dir.path(),
        &["resolve", &pushed.url, "--insecure-registry", &r.host()],
    );
    assert_eq!(stdout(&o).trim(), moved.manifest_digest);
    // Unknown tag: a fetch failure.
    expect(
        1,
        dir.path(),
        &[
            "resolve",
            &r.url("org/filter:nope"),
            "--insecure-registry",
            &r.host(),
        ],
    );

    // http: only with --download, which hashes without storing.
    let s = TestServer::start(ServerOptions::plain());
    s.route("/m.wasm", Route::bytes(module.clone()));
    expect(2, dir.path(), &["resolve", &s.url("/m.wasm")]);
    assert_eq!(s.hits("/m.wasm"), 0);
    let o = expect(0, dir.path(), &["resolve", &s.url("/m.wasm"), "--download"]);
    assert_eq!(stdout(&o).trim(), format!("sha256:{}", sha256_hex(&module)));
    assert!(!files_in(dir.path()).iter().any(|f| f.ends_with(".wasm")));
    // Not Wasm: refused.
    s.route("/text", Route::bytes(b"hello, not wasm".to_vec()));
    expect(1, dir.path(), &["resolve", &s.url("/text"), "--download"]);
}

#[test]
fn plain_http_registry_not_listed_as_insecure_gets_a_hint() {
    let r = Registry::start(RegistryKind::Plain);
    let module = sample_module(10_000, 14);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let pushed = rt.block_on(push_oci_image(&r, "org/p", "v1", &module));
    let dir = tempfile::tempdir().unwrap();
    let o = expect(1, dir.path(), &["fetch", &pushed.url, "--timeout", "10s"]);
    let e = stderr(&o);
    assert!(e.starts_with("error: "), "{e}");
    assert!(e.contains("--insecure-registry"), "{e}");
}

fn subcommands(dir: &Path) -> Vec<String> {
    let help = stdout(&expect(0, dir, &["--help"]));
    let cmds: Vec<String> = help
        .split("Commands:")
        .nth(1)
        .unwrap()
        .split("Options:")
        .next()
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .filter(|c| c != "help")
        .collect();
    for c in [
        "fetch",
        "resolve",
        "list",
        "purge",
        "verify",
        "completions",
        "json",
    ] {
        assert!(cmds.iter().any(|x| x == c), "{c} missing from {cmds:?}");
    }
    cmds
}

#[test]
fn completions_and_man_page_mention_every_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let cmds = subcommands(dir.path());
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let script = stdout(&expect(0, dir.path(), &["completions", shell]));
        for c in &cmds {
            assert!(script.contains(c.as_str()), "{shell} lacks {c}");
        }
        assert!(script.contains("insecure-registry"), "{shell}");
    }
    let page = stdout(&expect(0, dir.path(), &["man"]));
    assert!(
        page.starts_with(".ie") || page.contains(".TH wasm-cache"),
        "{page}"
    );
    for c in &cmds {
        assert!(
            page.contains(&format!("wasm\\-cache\\-{c}(1)")),
            "man lacks {c}"
        );
    }
    assert!(page.contains("Exit status"), "{page}");
    let pages = tempfile::tempdir().unwrap();
    expect(
        0,
        dir.path(),
        &["man", "--out-dir", pages.path().to_str().unwrap()],
    );
    let written = files_in(pages.path());
    assert!(written.contains(&"wasm-cache.1".to_owned()), "{written:?}");
    for c in &cmds {
        let name = format!("wasm-cache-{c}.1");
        assert!(written.contains(&name), "{name} not in {written:?}");
    }
    let fetch = std::fs::read_to_string(pages.path().join("wasm-cache-fetch.1")).unwrap();
    for opt in [
        "\\-\\-output",
        "\\-\\-json",
        "\\-\\-policy",
        "if\\-not\\-present",
    ] {
        assert!(fetch.contains(opt), "fetch page lacks {opt}");
    }
}

#[test]
fn a_download_locked_past_the_timeout_exits_3_and_readers_never_wait() {
    // Issue 13: no directory-wide lock. Another process holding the old
    // directory lock (`.lock`) holds nobody up; another process holding a
    // module's download lock (`.locks/<sha256 of "URL\n">.lock`, see
    // `FsStore::lock_key`) makes a fetch of that module give up when its
    // --timeout is over, with status 3, naming the lock.
    let s = TestServer::start(ServerOptions::plain());
    s.route("/m.wasm", Route::bytes(sample_module(4000, 3)));
    let url = s.url("/m.wasm");
    let dir = tempfile::tempdir().unwrap();
    expect(0, dir.path(), &["list"]);
    let dir_lock = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.path().join(".lock"))
        .unwrap();
    dir_lock.lock().unwrap();
    expect(0, dir.path(), &["list"]);
    std::fs::create_dir_all(dir.path().join(".locks")).unwrap();
    let key = sha256_hex(format!("{url}\n").as_bytes());
    let lock = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.path().join(".locks").join(format!("{key}.lock")))
        .unwrap();
    lock.lock().unwrap();
    let o = expect(3, dir.path(), &["fetch", &url, "--timeout", "1s"]);
    let e = stderr(&o);
    assert!(
        e.lines()
            .any(|l| l.starts_with("error: ") && l.contains(&format!("{key}.lock"))),
        "{e}"
    );
    assert_eq!(s.hits("/m.wasm"), 0);
    lock.unlock().unwrap();
    expect(0, dir.path(), &["fetch", &url]);
    dir_lock.unlock().unwrap();
}

#[test]
fn a_reader_that_goes_away_ends_the_command_quietly() {
    // `wasm-cache json | head -0`: the pipe's reader is gone before the
    // command writes; no panic, status 0 (whichever comes first).
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["json"][..],
        &["completions", "bash"],
        &["verify", "--json"],
    ] {
        let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("wasm-cache"))
            .arg("--dir")
            .arg(dir.path())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let o = child.wait_with_output().unwrap();
        let e = stderr(&o);
        assert!(!e.contains("panicked"), "{args:?}: {e}");
        assert_eq!(o.status.code(), Some(0), "{args:?}: {e}");
    }
}

#[test]
fn output_dash_writes_the_module_to_stdout() {
    let s = TestServer::start(ServerOptions::plain());
    let module = sample_module(300_000, 16);
    s.route("/m.wasm", Route::bytes(module.clone()));
    let dir = tempfile::tempdir().unwrap();
    let o = expect(0, dir.path(), &["fetch", &s.url("/m.wasm"), "-o", "-"]);
    assert!(o.stdout == module, "stdout is the module, nothing else");
    // From the cache, the same bytes.
    let o = expect(0, dir.path(), &["fetch", &s.url("/m.wasm"), "-o", "-"]);
    assert!(o.stdout == module);
    assert_eq!(s.hits("/m.wasm"), 1);
    let e = stderr(&expect(
        2,
        dir.path(),
        &["fetch", &s.url("/m.wasm"), "-o", "-", "--json"],
    ));
    assert!(e.contains("stdout"), "{e}");
    assert_eq!(s.hits("/m.wasm"), 1, "a usage error fetches nothing");
}
