//! A URL that does not parse may still carry credentials: users paste
//! passwords and tokens with unescaped `/`, `?`, `#` or `@` in them. The error
//! for such a URL (its `Display` and `Debug`) must not hold any part of them.
//!
//! FAILS on b04453c: `wasm_cache_core::redact_url` (crates/core/src/url.rs)
//! ends the authority at the first `/`, `?` or `#`, so when the password
//! holds one of them the `@` lies beyond the cut and the user-info is kept:
//! `https://admin:HUNTER/SECRET@127.0.0.1:1/m.wasm` is printed verbatim,
//! `https://admin:HUNTER?SECRET@...` as `https://admin:HUNTER?***`.

mod common;

use common::{builder, clock, req};

const PASSWORD_PARTS: [&str; 2] = ["HUNTER", "SECRET"];

#[tokio::test]
async fn errors_for_unparseable_urls_hold_no_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let cache = builder(dir.path(), &clock()).build().await.unwrap();
    let urls = [
        "https://admin:HUNTER2@[::1/m.wasm?sig=SECRET",
        "https://admin:HUNTER/SECRET@127.0.0.1:1/m.wasm",
        "https://admin:HUNTER?SECRET@127.0.0.1:1/m.wasm",
        "https://admin:HUNTER#SECRET@127.0.0.1:1/m.wasm",
        "http://admin:HUNTER2@127.0.0.1:99999/m.wasm?sig=SECRET",
        "https://:HUNTER2SECRET@/m.wasm",
    ];
    let mut leaks = Vec::new();
    for url in urls {
        let e = match cache.get(&req(url, "1")).await {
            Ok(p) => panic!("{url} was fetched to {}", p.display()),
            Err(e) => e,
        };
        for text in [e.to_string(), format!("{e:?}"), format!("{e:#?}")] {
            for part in PASSWORD_PARTS.iter().chain(&["admin"]) {
                if text.contains(part) {
                    leaks.push(format!("{url}: {text}"));
                    break;
                }
            }
        }
    }
    assert!(
        leaks.is_empty(),
        "credentials in errors:\n{}",
        leaks.join("\n")
    );
}

/// A malformed pull secret is refused with an error that says what is wrong,
/// never what it holds.
#[tokio::test]
async fn errors_for_malformed_pull_secrets_hold_no_secret() {
    use wasm_cache::PullSecret;
    use wasm_cache_testkit::images::push_oci_image;
    use wasm_cache_testkit::modules::sample_module;
    use wasm_cache_testkit::registry::{Registry, RegistryKind};

    let registry = Registry::start(RegistryKind::BasicAuth);
    let pushed = push_oci_image(&registry, "org/m", "v1", &sample_module(2_000, 81)).await;
    let host = registry.host();
    let dir = tempfile::tempdir().unwrap();
    let cache = builder(dir.path(), &clock())
        .insecure_hosts([host.clone()])
        .build()
        .await
        .unwrap();
    let secrets: Vec<Vec<u8>> = vec![
        b"HUNTER2 SECRET not json".to_vec(),
        format!(r#"{{"auths":{{"{host}":{{"auth":"HUNTER2SECRET!!"}}}}}}"#).into_bytes(),
        format!(r#"{{"auths":{{"{host}":{{"auth":"SFVOVEVSMlNFQ1JFVA=="}}}}}}"#).into_bytes(),
        format!(r#"{{"auths":{{"{host}":{{"username":"admin","password":42}}}}}}"#).into_bytes(),
        format!(r#"{{"auths":{{"{host}":"HUNTER2SECRET"}}}}"#).into_bytes(),
        br#"{"auths":{"HUNTER2SECRET":{}},"credsStore":"HUNTER2SECRET"}"#.to_vec(),
    ];
    let mut leaks = Vec::new();
    for secret in secrets {
        let shown = String::from_utf8_lossy(&secret).into_owned();
        let e = match cache
            .get(&req(&pushed.url, "1").pull_secret(PullSecret::new(secret)))
            .await
        {
            Ok(p) => panic!(
                "no valid credentials in {shown:?}, yet {} was fetched",
                p.display()
            ),
            Err(e) => e,
        };
        for text in [e.to_string(), format!("{e:?}")] {
            if PASSWORD_PARTS.iter().any(|p| text.contains(p)) {
                leaks.push(format!("{shown}: {text}"));
            }
        }
    }
    assert!(leaks.is_empty(), "secrets in errors:\n{}", leaks.join("\n"));
}
