//! Every `--json` output against its documentation: docs/CLI.md's "JSON
//! outputs" tables are parsed, every command is run against a real HTTP
//! server and registry, and each printed line must be one JSON object with
//! `"schema": 1`, every field the table marks `always`, no field it does not
//! list, and the documented types. Each documented field must show up in at
//! least one run, so the tables cannot list fields that do not exist.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use assert_cmd::Command;
use serde_json::Value;
use wasm_cache_testkit::http::{Route, ServerOptions, TestServer};
use wasm_cache_testkit::images::push_oci_image;
use wasm_cache_testkit::modules::{sample_module, sha256_hex};
use wasm_cache_testkit::registry::{Registry, RegistryKind};

#[derive(Debug)]
struct Field {
    ty: String,
    always: bool,
}

/// `"fetch"` -> field path (`removed[].name`) -> field.
type Spec = BTreeMap<String, BTreeMap<String, Field>>;

fn cli_md() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/CLI.md"))
        .unwrap()
}

fn spec() -> Spec {
    let md = cli_md();
    let mut spec = Spec::new();
    let mut current: Option<String> = None;
    for line in md.lines() {
        if let Some(h) = line.strip_prefix("### ") {
            current = h.strip_suffix(" --json").map(str::to_owned);
            continue;
        }
        let Some(cmd) = &current else { continue };
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // | `name` | type | presence | meaning |
        if cells.len() < 5 || !cells[1].starts_with('`') {
            continue;
        }
        let name = cells[1].trim_matches('`').to_owned();
        let always = match cells[3] {
            "always" => true,
            "optional" => false,
            other => panic!("{cmd}.{name}: presence {other:?}"),
        };
        spec.entry(cmd.clone()).or_default().insert(
            name,
            Field {
                ty: cells[2].to_owned(),
                always,
            },
        );
    }
    spec
}

fn type_ok(ty: &str, v: &Value) -> bool {
    match ty {
        "string" => v.is_string(),
        "integer" => v.is_u64(),
        "boolean" => v.is_boolean(),
        "array" => v.is_array(),
        other => panic!("undocumented type {other}"),
    }
}

/// Checks `obj` against the fields of `spec` under `prefix` (`""` or
/// `removed[].`); records which fields were seen.
fn check_object(
    cmd: &str,
    fields: &BTreeMap<String, Field>,
    prefix: &str,
    obj: &Value,
    seen: &mut BTreeSet<String>,
) {
    let map = obj
        .as_object()
        .unwrap_or_else(|| panic!("{cmd}: {obj} is not an object"));
    for (name, f) in fields {
        let Some(rest) = name.strip_prefix(prefix) else {
            continue;
        };
        if rest.contains('.') {
            continue;
        }
        match map.get(rest) {
            None => assert!(!f.always, "{cmd}: {name} missing from {obj}"),
            Some(v) => {
                assert!(type_ok(&f.ty, v), "{cmd}: {name} is not a {}: {v}", f.ty);
                seen.insert(name.clone());
            }
        }
    }
    for (key, v) in map {
        let path = format!("{prefix}{key}");
        assert!(
            fields.contains_key(&path),
            "{cmd}: field {path} is not documented in docs/CLI.md ({obj})"
        );
        let nested = format!("{path}[].");
        if fields.keys().any(|k| k.starts_with(&nested)) {
            for item in v.as_array().unwrap() {
                check_object(cmd, fields, &nested, item, seen);
            }
        } else if let Some(items) = v.as_array() {
            // Arrays without documented members hold strings (URLs, hashes).
            assert!(items.iter().all(Value::is_string), "{cmd}: {path}: {v}");
        }
    }
}

struct Checker {
    spec: Spec,
    seen: BTreeMap<String, BTreeSet<String>>,
}

impl Checker {
    /// Runs the command; checks every stdout line; returns the objects.
    fn run(&mut self, cmd: &str, dir: &Path, args: &[&str], code: i32) -> Vec<Value> {
        let o = Command::cargo_bin("wasm-cache")
            .unwrap()
            .arg("--dir")
            .arg(dir)
            .env_remove("RUST_LOG")
            .args(args)
            .output()
            .unwrap();
        let out = String::from_utf8(o.stdout).unwrap();
        assert_eq!(
            o.status.code(),
            Some(code),
            "{args:?}: {out} {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let fields = self
            .spec
            .get(cmd)
            .unwrap_or_else(|| panic!("no `### {cmd} --json` section in docs/CLI.md"));
        let mut docs = Vec::new();
        for line in out.lines() {
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{args:?}: not one JSON object per line: {e}: {line}"));
            assert_eq!(v["schema"], 1, "{args:?}: {line}");
            check_object(
                cmd,
                fields,
                "",
                &v,
                self.seen.entry(cmd.to_owned()).or_default(),
            );
            docs.push(v);
        }
        docs
    }
}

#[test]
fn every_json_output_matches_docs_cli_md() {
    let spec = spec();
    let names: BTreeSet<&str> = spec.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        BTreeSet::from(["fetch", "list", "purge", "resolve", "verify"])
    );
    let mut c = Checker {
        spec,
        seen: BTreeMap::new(),
    };

    let s = TestServer::start(ServerOptions::plain());
    let a = sample_module(6_000, 1);
    let b = sample_module(7_000, 2);
    s.route("/a.wasm", Route::bytes(a.clone()));
    s.route("/b.wasm", Route::bytes(b.clone()));
    let r = Registry::start(RegistryKind::Plain);
    let oci = sample_module(8_000, 3);
    let pushed = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(push_oci_image(&r, "org/filter", "v1", &oci));
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let host = r.host();

    // fetch: http miss, http hit with -o, OCI.
    let port = s.addr().port();
    let secret_url = format!("http://u:hunter2@127.0.0.1:{port}/a.wasm?sig=s3cr3t");
    let f = c.run("fetch", d, &["fetch", &secret_url, "--json"], 0);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0]["sha256"], sha256_hex(&a));
    assert_eq!(f[0]["size"], 6_000);
    assert_eq!(f[0]["cached"], false);
    assert_eq!(
        f[0]["url"],
        format!("http://***@127.0.0.1:{port}/a.wasm?***")
    );
    assert!(f[0].get("manifest_digest").is_none());
    assert_eq!(std::fs::read(f[0]["path"].as_str().unwrap()).unwrap(), a);
    let out = d.join("copy.wasm");
    let f = c.run(
        "fetch",
        d,
        &["fetch", &secret_url, "--json", "-o", out.to_str().unwrap()],
        0,
    );
    assert_eq!(f[0]["cached"], true);
    assert_eq!(f[0]["output"], out.to_str().unwrap());
    let f = c.run(
        "fetch",
        d,
        &["fetch", &pushed.url, "--insecure-registry", &host, "--json"],
        0,
    );
    assert_eq!(f[0]["manifest_digest"], pushed.manifest_digest.as_str());
    assert_eq!(f[0]["sha256"], sha256_hex(&oci));
    assert_eq!(f[0]["cached"], false);
    let pb = c.run("fetch", d, &["fetch", &s.url("/b.wasm"), "--json"], 0)[0]["path"]
        .as_str()
        .unwrap()
        .to_owned();

    // resolve: OCI manifest, http module.
    let r1 = c.run(
        "resolve",
        d,
        &[
            "resolve",
            &pushed.url,
            "--insecure-registry",
            &host,
            "--json",
        ],
        0,
    );
    assert_eq!(r1[0]["digest"], pushed.manifest_digest.as_str());
    assert_eq!(r1[0]["kind"], "manifest");
    let r2 = c.run(
        "resolve",
        d,
        &["resolve", &s.url("/b.wasm"), "--download", "--json"],
        0,
    );
    assert_eq!(r2[0]["digest"], format!("sha256:{}", sha256_hex(&b)));
    assert_eq!(r2[0]["kind"], "module");
    assert_eq!(r2[0]["size"], 7_000);

    // list: one line per module.
    let l = c.run("list", d, &["list", "--json"], 0);
    assert_eq!(l.len(), 3);
    assert!(
        l.iter()
            .any(|m| m["checksum"] == pushed.manifest_digest.trim_start_matches("sha256:"))
    );
    assert!(!serde_json::to_string(&l).unwrap().contains("hunter2"));

    // verify: one corrupt module, reported, then repaired.
    let mut bytes = std::fs::read(&pb).unwrap();
    bytes[50] ^= 1;
    std::fs::write(&pb, bytes).unwrap();
    let v = c.run("verify", d, &["verify", "--json"], 1);
    assert_eq!(v[0]["verified"], 3);
    assert_eq!(v[0]["corrupt"][0]["sha256"], sha256_hex(&b));
    assert_eq!(v[0]["corrupt"][0]["repaired"], false);
    assert_eq!(v[0]["ok"].as_array().unwrap().len(), 2);
    let v = c.run("verify", d, &["verify", "--repair", "--json"], 0);
    assert_eq!(v[0]["repaired"][0], sha256_hex(&b));
    assert_eq!(v[0]["corrupt"][0]["repaired"], true);
    let v = c.run("verify", d, &["verify", "--json"], 0);
    assert_eq!(v[0]["corrupt"].as_array().unwrap().len(), 0);

    // purge: nothing to remove, then everything.
    let p = c.run("purge", d, &["purge", "--json"], 0);
    assert_eq!(p[0]["removed"].as_array().unwrap().len(), 0);
    assert_eq!(p[0]["kept"].as_array().unwrap().len(), 2);
    let p = c.run("purge", d, &["purge", "--expiry", "0s", "--json"], 0);
    let removed = p[0]["removed"].as_array().unwrap();
    assert_eq!(removed.len(), 2);
    assert!(removed.iter().all(|x| x["reason"] == "expired"));
    assert_eq!(p[0]["kept"].as_array().unwrap().len(), 0);
    assert_eq!(p[0]["files_removed"], 2);
    assert!(c.run("list", d, &["list", "--json"], 0).is_empty());

    // Every documented field appeared at least once.
    for (cmd, fields) in &c.spec {
        let seen = c.seen.get(cmd).cloned().unwrap_or_default();
        for name in fields.keys() {
            assert!(
                seen.contains(name),
                "{cmd}: documented field {name} never printed"
            );
        }
    }
}

#[test]
fn the_json_documentation_is_reachable_from_the_command() {
    let dir = tempfile::tempdir().unwrap();
    let o = Command::cargo_bin("wasm-cache")
        .unwrap()
        .arg("json")
        .output()
        .unwrap();
    assert!(o.status.success());
    let text = String::from_utf8(o.stdout).unwrap();
    let md = cli_md();
    assert!(
        md.contains(text.trim()),
        "the command prints docs/CLI.md's section"
    );
    for cmd in ["fetch", "resolve", "list", "purge", "verify"] {
        assert!(text.contains(&format!("### {cmd} --json")), "{text}");
    }
    // `wasm-cache help json` shows it too.
    let o = Command::cargo_bin("wasm-cache")
        .unwrap()
        .args(["help", "json"])
        .output()
        .unwrap();
    assert!(o.status.success());
    let help = String::from_utf8(o.stdout).unwrap();
    assert!(help.contains("### verify --json"), "{help}");
    assert!(help.contains("`manifest_digest`"), "{help}");
    // `help` points to it, on every command with --json.
    for args in [&["--help"][..], &["fetch", "--help"], &["list", "--help"]] {
        let o = Command::cargo_bin("wasm-cache")
            .unwrap()
            .arg("--dir")
            .arg(dir.path())
            .args(args)
            .output()
            .unwrap();
        assert!(
            String::from_utf8(o.stdout)
                .unwrap()
                .contains("wasm-cache json"),
            "{args:?}"
        );
    }
}
