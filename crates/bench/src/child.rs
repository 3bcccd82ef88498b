//! Running one command: wall time and the peak RSS of that very process.

use std::fs::File;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// What one run of a command cost.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Run {
    /// From spawn to exit.
    pub(crate) elapsed: Duration,
    /// The process's peak resident set size, in bytes (`ru_maxrss` of `wait4`).
    pub(crate) max_rss: u64,
}

/// The hidden first argument that makes the runner a measuring wrapper
/// ([`measure_main`]).
pub(crate) const MEASURE: &str = "__measure";

/// Runs `cmd` with stdout to `log.out` and stderr to `log.err`; fails with the
/// end of its stderr when it exits non-zero.
///
/// The command runs under a fresh, small copy of this runner ([`MEASURE`]):
/// Linux counts the RSS a child had before `exec` (that of the process that
/// forked it) in its `ru_maxrss`, so forking the measured command from this
/// big process (it holds the served modules) would report our own RSS.
pub(crate) fn run(cmd: &Command, log: &Path) -> Result<Run, String> {
    let out_path = log.with_extension("out");
    let err_path = log.with_extension("err");
    let shown = format!("{cmd:?}");
    let me = std::env::current_exe().map_err(|e| format!("finding the runner's own path: {e}"))?;
    let output = Command::new(me)
        .arg(MEASURE)
        .arg(&out_path)
        .arg(&err_path)
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("starting {shown}: {e}"))?;
    let report = String::from_utf8_lossy(&output.stdout);
    let fields: Vec<&str> = report.split_whitespace().collect();
    let [nanos, rss, code] = fields[..] else {
        return Err(format!("measuring {shown}: unexpected report {report:?}"));
    };
    let (Ok(nanos), Ok(max_rss)) = (nanos.parse::<u64>(), rss.parse::<u64>()) else {
        return Err(format!("measuring {shown}: unexpected report {report:?}"));
    };
    if code != "0" {
        let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
        let lines: Vec<&str> = stderr.lines().collect();
        let tail = lines[lines.len().saturating_sub(10)..].join("\n");
        return Err(format!("{shown} failed (exit {code}):\n{tail}"));
    }
    Ok(Run {
        elapsed: Duration::from_nanos(nanos),
        max_rss,
    })
}

/// The measuring wrapper: `__measure OUT ERR PROGRAM ARGS...` runs PROGRAM
/// with stdout to OUT and stderr to ERR, reaps it with `wait4` and prints
/// `<wall nanoseconds> <peak RSS bytes> <exit code or signal-N>`.
pub(crate) fn measure_main(args: &[std::ffi::OsString]) -> Result<(), String> {
    let [out, err, program, rest @ ..] = args else {
        return Err(format!("usage: {MEASURE} OUT ERR PROGRAM [ARGS...]"));
    };
    let (elapsed, max_rss, code) = measure(Path::new(out), Path::new(err), program, rest)?;
    println!("{} {max_rss} {code}", elapsed.as_nanos());
    Ok(())
}

/// Runs `program` (stdout to `out`, stderr to `err`): wall time, peak RSS in
/// bytes, and the exit code (or `signal-N`).
fn measure(
    out: &Path,
    err: &Path,
    program: &std::ffi::OsStr,
    args: &[std::ffi::OsString],
) -> Result<(Duration, u64, String), String> {
    let shown = Path::new(program).display();
    let out = File::create(out).map_err(|e| format!("creating {}: {e}", out.display()))?;
    let err = File::create(err).map_err(|e| format!("creating {}: {e}", err.display()))?;
    let start = Instant::now();
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("starting {shown}: {e}"))?;
    let (status, max_rss) =
        wait_with_rusage(child.id()).map_err(|e| format!("waiting for {shown}: {e}"))?;
    let elapsed = start.elapsed();
    // Already reaped by wait4: dropping the handle neither waits nor kills.
    drop(child);
    let code = status.code().map_or_else(
        || format!("signal-{}", status.signal().unwrap_or(0)),
        |c| c.to_string(),
    );
    Ok((elapsed, max_rss, code))
}

/// The first line `cmd` wrote on stdout during [`run`] with the same `log`.
pub(crate) fn stdout_line(log: &Path) -> Result<String, String> {
    let path = log.with_extension("out");
    let text =
        std::fs::read_to_string(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    Ok(text.lines().next().unwrap_or_default().to_owned())
}

/// Reaps `pid` with `wait4`, which reports that child's own resource usage
/// (`getrusage(RUSAGE_CHILDREN)` would give the maximum over every child so far).
#[allow(
    unsafe_code,
    reason = "wait4 is the only interface giving one child's peak RSS; std does not expose it"
)]
fn wait_with_rusage(pid: u32) -> io::Result<(ExitStatus, u64)> {
    let pid = libc::pid_t::try_from(pid).map_err(io::Error::other)?;
    let mut status: libc::c_int = 0;
    // SAFETY: `rusage` is plain old data for which all-zero bytes are valid.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: both pointers are to live, writable locals of the right types.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    // Linux reports ru_maxrss in KiB.
    let kib = u64::try_from(usage.ru_maxrss).unwrap_or(0);
    Ok((ExitStatus::from_raw(status), kib * 1024))
}

/// The median of `values` (the lower middle for an even count).
pub(crate) fn median<T: Copy + Ord>(values: &[T]) -> T {
    let mut v = values.to_vec();
    v.sort_unstable();
    v[(v.len() - 1) / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_a_real_child() {
        let dir = tempfile::tempdir().unwrap();
        let (out, err) = (dir.path().join("x.out"), dir.path().join("x.err"));
        let args = [
            "-c".into(),
            "echo hello; head -c 50000000 /dev/zero | tail -c 1 >/dev/null".into(),
        ];
        let (took, rss, code) = measure(&out, &err, "sh".as_ref(), &args).unwrap();
        assert_eq!(code, "0");
        assert!(took > Duration::ZERO);
        assert!(rss > 0);
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "hello\n");
        let args = ["-c".into(), "echo broken >&2; exit 3".into()];
        let (_, _, code) = measure(&out, &err, "sh".as_ref(), &args).unwrap();
        assert_eq!(code, "3");
        assert_eq!(std::fs::read_to_string(&err).unwrap(), "broken\n");
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3, 1, 2]), 2);
        assert_eq!(median(&[4, 1, 3, 2]), 2);
        assert_eq!(median(&[7]), 7);
    }
}
