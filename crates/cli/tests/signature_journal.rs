//! `fetch --verify-key` across processes: a verification is journaled, so the
//! next process serves the module without a request (even with the registry
//! gone); another key still needs the signature.

use std::path::Path;

use assert_cmd::Command;
use wasm_cache_testkit::cosign;
use wasm_cache_testkit::images::push_oci_image;
use wasm_cache_testkit::modules::sample_module;
use wasm_cache_testkit::registry::{Registry, RegistryKind};

fn fetch(dir: &Path, args: &[String]) -> std::process::Output {
    Command::cargo_bin("wasm-cache")
        .unwrap()
        .arg("--dir")
        .arg(dir)
        .env_remove("WASM_CACHE_DIR")
        .arg("fetch")
        .args(args)
        .output()
        .unwrap()
}

fn fetch_ok(dir: &Path, args: &[String]) -> String {
    let o = fetch(dir, args);
    assert!(
        o.status.success(),
        "fetch {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap().trim_end().to_owned()
}

fn fetch_err(dir: &Path, args: &[String]) -> String {
    let o = fetch(dir, args);
    assert_eq!(o.status.code(), Some(1), "fetch {args:?} should fail");
    assert!(o.stdout.is_empty());
    String::from_utf8(o.stderr).unwrap()
}

#[test]
fn a_verification_is_remembered_by_the_next_process() {
    let r = Registry::start(RegistryKind::Plain);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let module = sample_module(20_000, 9);
    let pushed = rt.block_on(push_oci_image(&r, "org/remembered", "v1", &module));
    let key = cosign::generate_p256();
    rt.block_on(cosign::sign_image(
        &r,
        "org/remembered",
        &pushed.manifest_digest,
        &key,
    ));
    let keys = tempfile::tempdir().unwrap();
    let key_arg = cosign::write_public_key(keys.path(), "cosign.pub", &key);
    let key_arg = key_arg.to_str().unwrap();
    let other = cosign::generate_p256();
    let other_arg = cosign::write_public_key(keys.path(), "other.pub", &other);
    let other_arg = other_arg.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let host = r.host();
    let args = |key: &str| -> Vec<String> {
        vec![
            pushed.url.clone(),
            "--insecure-registry".into(),
            host.clone(),
            "--timeout".into(),
            "5s".into(),
            "--verify-key".into(),
            key.into(),
        ]
    };

    // First process: verifies (signature fetched) and downloads.
    let path = fetch_ok(dir.path(), &args(key_arg));
    assert_eq!(std::fs::read(&path).unwrap(), module);
    let before = r.sync_requests().len();

    // Second process, same key: a hit that makes no request at all.
    assert_eq!(fetch_ok(dir.path(), &args(key_arg)), path);
    let after = r.sync_requests();
    assert_eq!(
        after.len(),
        before,
        "the second process made requests: {:?}",
        &after[before..]
    );

    // The same manifest copied to another repository without its signature:
    // the digest is signed, so it is served (as cosign accepts a copied
    // image's signature); a policy requiring the payload to name the
    // repository refuses it.
    let copy = rt.block_on(push_oci_image(&r, "org/copy", "v1", &module));
    assert_eq!(copy.manifest_digest, pushed.manifest_digest);
    let mut copy_args = args(key_arg);
    copy_args[0] = copy.url.clone();
    assert_eq!(fetch_ok(dir.path(), &copy_args), path);
    copy_args.push("--require-reference".into());
    let e = fetch_err(dir.path(), &copy_args);
    assert!(e.contains("error: no valid signature for"), "{e}");
    assert!(
        !e.contains("warning"),
        "a genuine record is no warning: {e}"
    );

    // Registry gone: the same key still hits; another key needs the
    // signature, which cannot be fetched, so nothing is served.
    drop(r);
    assert_eq!(fetch_ok(dir.path(), &args(key_arg)), path);
    let e = fetch_err(dir.path(), &args(other_arg));
    assert!(e.starts_with("error: "), "{e}");
    assert!(!e.contains(&path), "{e}");
}
