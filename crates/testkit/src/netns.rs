//! Tests that need addresses other than loopback (a fake 169.254.169.254, a
//! "public" server) run in a network namespace of their own, so nothing
//! leaves the machine and nothing on it is disturbed.
//!
//! [`enter`] re-runs the calling test in a new network namespace
//! (`unshare -n`, which CI allows: it runs as root), with `lo` up and the
//! given addresses added to it; the outer run waits for the inner one and
//! fails with its output if it failed. The test body runs only inside:
//!
//! ```no_run
//! #[test]
//! fn metadata_is_refused() {
//!     if !wasm_cache_testkit::netns::enter("metadata_is_refused", &["169.254.169.254/32"]) {
//!         return; // the outer run: the inner one passed
//!     }
//!     // ... here 169.254.169.254 is an address of this namespace's `lo`
//! }
//! ```

use std::process::Command;

const ENV: &str = "WASM_CACHE_TEST_NETNS";

/// Whether the caller is inside the namespace (and should run its body).
/// In the outer run: runs `test` (its exact name in this test binary) again
/// inside a new network namespace with `addrs` (CIDR notation) on `lo`,
/// panics with the inner run's output unless it passed, and returns false.
///
/// # Panics
/// When the namespace cannot be made or the inner run fails.
pub fn enter(test: &str, addrs: &[&str]) -> bool {
    if std::env::var(ENV).is_ok_and(|v| v == test) {
        return true;
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut script = "ip link set lo up".to_owned();
    for a in addrs {
        script.push_str(&format!(" && ip addr add {a} dev lo"));
    }
    script.push_str(" && exec \"$0\" \"$@\"");
    let out = Command::new("unshare")
        .args(["-n", "--", "sh", "-c", &script])
        .arg(exe)
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(ENV, test)
        .output()
        .expect("running unshare -n (util-linux) to make a network namespace");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "the test in its network namespace failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    false
}
