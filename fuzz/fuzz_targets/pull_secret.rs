//! Pull-secret parsing (Docker `config.json` bytes, as a fetch parses them)
//! on arbitrary bytes, raw and as the value of every field of an `auths`
//! entry next to a known secret.
//!
//! Properties: nothing panics, and an error never echoes the known secret.
//! (Nothing can be executed: the parser is plain serde_json; the suite's
//! `credential_helpers_run_only_from_the_operators_config_never_from_a_pull_secret` proves it end to end.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use wasm_fetch_oci::check_pull_secret;

const REGISTRY: &str = "registry.example:5000";
const SECRET: &str = "S3cr3t-Fuzz-Marker";

fn check(config: &[u8]) {
    if let Err(e) = check_pull_secret(config, REGISTRY) {
        let shown = format!("{e} {e:?}");
        assert!(!shown.contains(SECRET), "an error echoes the secret: {shown}");
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let fuzzed: String = s
        .chars()
        .filter(|c| !c.is_control() && *c != '"' && *c != '\\')
        .collect();
    for field in ["auth", "username", "password", "registrytoken", "identitytoken"] {
        for value in [format!("{fuzzed}{SECRET}"), format!("{SECRET}{fuzzed}")] {
            let config = format!(
                r#"{{"auths":{{"{REGISTRY}":{{"{field}":"{value}","username":"u{fuzzed}"}}}}}}"#
            );
            check(config.as_bytes());
        }
    }
    // The fuzzed bytes as the whole entry, with the secret beside them.
    let config = format!(
        r#"{{"auths":{{"{REGISTRY}":{{"password":"{SECRET}",{s}}}}}}}"#
    );
    check(config.as_bytes());
});
