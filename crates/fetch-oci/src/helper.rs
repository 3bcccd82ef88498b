//! Docker credential helpers (`docker-credential-<name> get`), named only by
//! the operator's docker config, never by a pull secret.
//!
//! A helper is found on `PATH` (or the builder's
//! [`credential_helper_path`](crate::OciFetcherBuilder::credential_helper_path)),
//! run in its own process group with the registry host on stdin, until the
//! request's deadline; its answer is read up to [`MAX_HELPER_OUTPUT`] bytes.
//! On timeout, overflow or cancellation the whole process group is killed and
//! the helper reaped. Errors name the helper and quote a shortened, redacted
//! part of its stderr, never its stdout.

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use wasm_cache_core::Error;

use crate::auth::Credentials;

/// The most a helper may write to stdout; more is refused.
pub const MAX_HELPER_OUTPUT: usize = 64 * 1024;
/// The most of a helper's stderr kept (the rest is read and dropped).
const MAX_STDERR_KEPT: usize = 4096;
/// The most of a helper's stderr an error quotes.
const MAX_STDERR_SHOWN: usize = 300;
/// Time kept back from the request's deadline to kill and reap a helper.
const REAP_MARGIN: Duration = Duration::from_millis(200);

/// Kills a helper's process group when dropped (a cancelled or failed run).
struct GroupKill(Option<u32>);

impl GroupKill {
    fn kill(&mut self) {
        if let Some(pid) = self.0.take()
            && let Some(pid) = i32::try_from(pid)
                .ok()
                .and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    }
}

impl Drop for GroupKill {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether `name` is a helper name (no path separators or oddities).
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !name.starts_with('.')
}

fn find_program(program: &str, path: Option<&OsStr>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let path: OsString = match path {
        Some(p) => p.to_owned(),
        None => std::env::var_os("PATH")?,
    };
    std::env::split_paths(&path)
        .filter(|d| d.is_absolute())
        .map(|d| d.join(program))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Replaces secret-looking words (long runs of token characters) in `text`.
pub(crate) fn redact_words(text: &str) -> String {
    text.split_inclusive(char::is_whitespace)
        .map(|w| {
            let core = w.trim_end();
            let tokenish = core.len() >= 16
                && core
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+/=_-.:".contains(&b));
            if tokenish {
                w.replacen(core, "<redacted>", 1)
            } else {
                w.to_owned()
            }
        })
        .collect()
}

fn quote_stderr(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let text = redact_words(text.trim());
    let mut shown: String = text.chars().take(MAX_STDERR_SHOWN).collect();
    if shown.len() < text.len() {
        shown.push_str("...");
    }
    if shown.is_empty() {
        "(no stderr)".to_owned()
    } else {
        format!("stderr: {shown:?}")
    }
}

/// Why reading a helper's output stopped.
enum Output {
    Overflow,
    Io(std::io::Error),
}

/// Reads all of `r`, keeping at most `keep` bytes; past `limit` bytes it
/// fails with [`Output::Overflow`] (when `limit` is some).
async fn read_bounded(
    r: Option<impl AsyncRead + Unpin>,
    keep: usize,
    limit: Option<usize>,
) -> Result<Vec<u8>, Output> {
    let Some(mut r) = r else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    let mut seen = 0usize;
    let mut buf = vec![0u8; 8192];
    loop {
        let n = r.read(&mut buf).await.map_err(Output::Io)?;
        if n == 0 {
            return Ok(out);
        }
        seen += n;
        if limit.is_some_and(|l| seen > l) {
            return Err(Output::Overflow);
        }
        let room = keep.saturating_sub(out.len()).min(n);
        out.extend_from_slice(&buf[..room]);
    }
}

#[derive(serde::Deserialize)]
struct HelperAnswer {
    #[serde(rename = "Username", default)]
    username: String,
    #[serde(rename = "Secret", default)]
    secret: String,
}

/// Runs `docker-credential-<name> get` for `server` until `deadline`.
/// `Ok(None)` when the helper has no credentials for it.
///
/// # Errors
/// [`Error::InvalidConfig`] for a bad helper name or a helper not found;
/// [`Error::Unauthorized`] (naming `url` and the helper) when it fails,
/// answers garbage or too much; [`Error::Timeout`] when it does not answer in time.
pub(crate) async fn run(
    name: &str,
    server: &str,
    path: Option<&OsStr>,
    deadline: Instant,
    url: &str,
) -> Result<Option<Credentials>, Error> {
    let program = format!("docker-credential-{name}");
    if !valid_name(name) {
        return Err(Error::InvalidConfig {
            reason: format!("the docker config names an invalid credential helper {name:?}"),
        });
    }
    let exe = find_program(&program, path).ok_or_else(|| Error::InvalidConfig {
        reason: format!("credential helper {program} (named by the docker config) is not on PATH"),
    })?;
    let failed = |what: String| Error::Unauthorized {
        url: url.to_owned(),
        reason: format!("credential helper {program} {what}"),
    };
    let start = Instant::now();
    let mut child = tokio::process::Command::new(&exe)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| failed(format!("could not be started: {e}")))?;
    // Declared after `child`: dropped (the group killed) before it.
    let mut group = GroupKill(child.id());
    let stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let talk = async {
        let write = async {
            if let Some(mut stdin) = stdin {
                // A helper that does not read its stdin is its own business.
                let _ = stdin.write_all(server.as_bytes()).await;
                let _ = stdin.shutdown().await;
            }
            Ok::<(), Output>(())
        };
        let ((), out, err) = tokio::try_join!(
            write,
            read_bounded(stdout, MAX_HELPER_OUTPUT, Some(MAX_HELPER_OUTPUT)),
            read_bounded(stderr, MAX_STDERR_KEPT, None),
        )?;
        let status = child.wait().await.map_err(Output::Io)?;
        Ok::<_, Output>((status, out, err))
    };
    let helper_deadline = deadline.checked_sub(REAP_MARGIN).unwrap_or(deadline);
    let outcome = tokio::time::timeout_at(helper_deadline.into(), talk).await;
    let (status, out, err) = match outcome {
        Ok(Ok(done)) => {
            group.0 = None;
            done
        }
        other => {
            // Kill the whole group, then reap the helper (bounded).
            group.kill();
            let _ = child.start_kill();
            let _ = tokio::time::timeout(REAP_MARGIN, child.wait()).await;
            return Err(match other {
                Err(_) => Error::Timeout {
                    url: format!("{url} (credential helper {program}, killed)"),
                    elapsed: start.elapsed(),
                },
                Ok(Err(Output::Overflow)) => {
                    failed(format!("wrote more than {MAX_HELPER_OUTPUT} bytes; killed"))
                }
                Ok(Err(Output::Io(e))) => failed(format!("could not be read: {e}")),
                Ok(Ok(_)) => unreachable!("handled above"),
            });
        }
    };
    if !status.success() {
        // docker-credential-helpers' "credentials not found" (on stdout).
        if String::from_utf8_lossy(&out).contains("credentials not found") {
            return Ok(None);
        }
        return Err(failed(format!("failed ({status}): {}", quote_stderr(&err))));
    }
    let answer: HelperAnswer = serde_json::from_slice(&out)
        .map_err(|_| failed("answered something that is not its JSON credentials".to_owned()))?;
    if answer.secret.is_empty() {
        return Ok(None);
    }
    Ok(Some(if answer.username == "<token>" {
        Credentials::IdentityToken(answer.secret)
    } else {
        Credentials::Basic {
            user: answer.username,
            password: answer.secret,
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_redaction() {
        assert!(valid_name("ecr-login") && valid_name("gcr") && valid_name("desktop.exe"));
        for bad in ["", "../x", "a/b", ".hidden", "a b"] {
            assert!(!valid_name(bad), "{bad}");
        }
        let shown = quote_stderr(b"error: token eyJhbGciOiJFUzI1NiJ9.abcdefgh rejected\n");
        assert!(
            shown.contains("<redacted>") && !shown.contains("eyJhbGci"),
            "{shown}"
        );
        assert!(quote_stderr(&[b'x'; 5000]).len() < 400);
    }
}
