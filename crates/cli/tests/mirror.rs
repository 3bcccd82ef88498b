//! `--registry-mirror` and the config file (`--config`, `WASM_CACHE_CONFIG`),
//! run as a process against a real upstream `docker-registry` and a real
//! pull-through `docker-registry` in front of it, on 127.0.0.1.

use std::path::Path;
use std::process::Output;

use assert_cmd::Command;
use wasm_cache_testkit::images::push_oci_image;
use wasm_cache_testkit::modules::sample_module;
use wasm_cache_testkit::registry::{Registry, RegistryKind};

fn cli(dir: &Path) -> Command {
    let mut c = Command::cargo_bin("wasm-cache").unwrap();
    c.arg("--dir")
        .arg(dir)
        .env_remove("WASM_CACHE_DIR")
        .env_remove("WASM_CACHE_CONFIG");
    c
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(o: &Output) -> String {
    assert!(o.status.success(), "failed: {}", stderr(o));
    String::from_utf8(o.stdout.clone())
        .unwrap()
        .trim_end()
        .to_owned()
}

/// Blob GETs the registry answered with 200.
fn blob_gets(r: &Registry) -> usize {
    r.sync_requests()
        .iter()
        .filter(|q| q.is_blob_get() && q.status == 200)
        .count()
}

#[test]
fn registry_mirror_flag_pulls_through_the_mirror() {
    let upstream = Registry::start(RegistryKind::Plain);
    let mirror = Registry::start(RegistryKind::mirror_of(&upstream));
    let module = sample_module(20_000, 31);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let pushed = rt.block_on(push_oci_image(&upstream, "org/flag", "v1", &module));
    let dir = tempfile::tempdir().unwrap();
    let flag = format!("{}=http://{}", upstream.host(), mirror.host());
    let o = cli(dir.path())
        .args([
            "-v",
            "fetch",
            &pushed.url,
            "--insecure-registry",
            &upstream.host(),
        ])
        .args(["--registry-mirror", &flag])
        .output()
        .unwrap();
    let path = ok(&o);
    assert_eq!(std::fs::read(&path).unwrap(), module);
    // The module came through the mirror, asked with ns=.
    let ns = format!("ns={}", upstream.host().replace(':', "%3A"));
    let seen = mirror.sync_requests();
    assert!(
        seen.iter()
            .any(|q| q.is_blob_get() && q.status == 200 && q.path.contains(&ns)),
        "{seen:?}"
    );
    assert!(stderr(&o).contains("served by mirror"), "{}", stderr(&o));

    // A malformed flag is a usage error.
    let o = cli(dir.path())
        .args(["fetch", &pushed.url, "--registry-mirror", "no-equals-sign"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("REGISTRY=URL"), "{}", stderr(&o));
    // So is a mirror URL the library refuses (credentials in the URL), and
    // the password is not echoed.
    let o = cli(dir.path())
        .args(["fetch", &pushed.url, "--registry-mirror"])
        .arg(format!(
            "{}=https://u:hunter2@{}",
            upstream.host(),
            mirror.host()
        ))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(!stderr(&o).contains("hunter2"), "{}", stderr(&o));
}

#[test]
fn config_file_mirrors_serve_when_the_upstream_is_gone() {
    let upstream = Registry::start(RegistryKind::Plain);
    let mirror = Registry::start(RegistryKind::mirror_of(&upstream));
    let module = sample_module(24_000, 32);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let pushed = rt.block_on(push_oci_image(&upstream, "org/file", "v1", &module));
    let conf_dir = tempfile::tempdir().unwrap();
    let conf = conf_dir.path().join("wasm-cache.toml");
    std::fs::write(
        &conf,
        format!(
            "insecure_registries = [\"{up}\"]\n\n[[registry.\"{up}\".mirrors]]\nurl = \"http://{mi}\"\n",
            up = upstream.host(),
            mi = mirror.host()
        ),
    )
    .unwrap();
    // Warm the mirror with --config.
    let dir = tempfile::tempdir().unwrap();
    let o = cli(dir.path())
        .args(["fetch", &pushed.url, "--config"])
        .arg(&conf)
        .output()
        .unwrap();
    assert_eq!(std::fs::read(ok(&o)).unwrap(), module);
    assert!(blob_gets(&mirror) >= 1);
    // distribution 2.8 stores a proxied blob in the background, after
    // answering: wait (with a deadline) until it holds the layer.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !mirror.blob_data_path(&pushed.layer_digest).exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the mirror never stored the layer"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    drop(upstream);
    // Another node, the config from the environment, the upstream gone.
    let dir = tempfile::tempdir().unwrap();
    let o = cli(dir.path())
        .env("WASM_CACHE_CONFIG", &conf)
        .args(["fetch", &pushed.url])
        .output()
        .unwrap();
    assert_eq!(std::fs::read(ok(&o)).unwrap(), module);
    let o = cli(dir.path())
        .env("WASM_CACHE_CONFIG", &conf)
        .args(["resolve", &pushed.url])
        .output()
        .unwrap();
    assert_eq!(ok(&o), pushed.manifest_digest);
}

#[test]
fn a_bad_config_file_is_a_usage_error_naming_the_file_and_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("bad.toml");
    let url = "oci://127.0.0.1:9/org/m:v1";
    for (text, field) in [
        (
            "[[registry.\"r.io\".mirrors]]\nurl = \"https://m\"\ninsecur = true\n",
            "insecur",
        ),
        ("[[registry.\"r.io\".mirrors]]\ninsecure = true\n", "url"),
        (
            "[[registry.\"r.io\".mirrors]]\nurl = \"ftp://m\"\n",
            "registry.\"r.io\".mirrors[0].url",
        ),
        (
            "[[registry.\"https://r.io\".mirrors]]\nurl = \"https://m\"\n",
            "https://r.io",
        ),
        (
            "insecure_registries = \"not-a-list\"\n",
            "insecure_registries",
        ),
        (
            "[[registry.\"r.io\".mirrors]]\nurl = \"https://m\"\n[registry.\"r.io\".mirrors.credentials]\nusername = \"u\"\npassword = \"pw-in-file\"\npassword_file = \"/x\"\n",
            "credentials",
        ),
    ] {
        std::fs::write(&conf, text).unwrap();
        let o = cli(dir.path())
            .args(["fetch", url, "--config"])
            .arg(&conf)
            .output()
            .unwrap();
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(err.contains(&conf.display().to_string()), "{err}");
        assert!(err.contains(field), "{field}: {err}");
        assert!(!err.contains("pw-in-file"), "{err}");
    }
    // A missing file, named.
    let o = cli(dir.path())
        .env("WASM_CACHE_CONFIG", dir.path().join("missing.toml"))
        .args(["fetch", url])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("missing.toml"), "{}", stderr(&o));
}
