//! Registry credentials the way operators keep them (issue 20): credential
//! helpers named by the operator's docker config, identity and registry
//! tokens, both Kubernetes pull-secret formats. Against real registries
//! (htpasswd and token-auth `docker-registry`, testkit's token server); the
//! helpers are small shell scripts each test writes into its own directory,
//! passed to the fetcher (never the process's `PATH` or `DOCKER_CONFIG`).

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use wasm_cache_core::retry::Backoff;
use wasm_cache_core::{Error, ErrorKind, FetchRequest, Fetcher, ModuleUrl, PullSecret};
use wasm_cache_testkit::images;
use wasm_cache_testkit::modules::sample_module;
use wasm_cache_testkit::registry::{self, Registry, RegistryKind, TEST_PASSWORD, TEST_USER};
use wasm_cache_testkit::token::TEST_REFRESH_TOKEN;
use wasm_fetch_oci::OciFetcher;

const TIMEOUT: Duration = Duration::from_secs(30);

/// A docker config directory and a helper directory of one test.
struct Operator {
    dir: tempfile::TempDir,
}

impl Operator {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("bin")).unwrap();
        std::fs::create_dir(dir.path().join("docker")).unwrap();
        Self { dir }
    }

    fn bin(&self) -> PathBuf {
        self.dir.path().join("bin")
    }

    fn config(&self, json: &serde_json::Value) {
        std::fs::write(
            self.dir.path().join("docker/config.json"),
            serde_json::to_vec(json).unwrap(),
        )
        .unwrap();
    }

    /// Writes `docker-credential-<name>`: records its stdin in `ran-<name>`
    /// (the marker), then runs `body`.
    fn helper(&self, name: &str, body: &str) {
        let marker = self.marker(name);
        let path = self.bin().join(format!("docker-credential-{name}"));
        let mut f = std::fs::File::create(&path).unwrap();
        write!(
            f,
            "#!/bin/sh\n[ \"$1\" = get ] || exit 3\nread -r host\necho \"$host\" >> '{}'\n{body}\n",
            marker.display()
        )
        .unwrap();
        drop(f);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// A helper answering `user` / `secret`.
    fn answering(&self, name: &str, user: &str, secret: &str) {
        self.helper(
            name,
            &format!(
                "printf '{{\"ServerURL\":\"%s\",\"Username\":\"{user}\",\"Secret\":\"{secret}\"}}' \"$host\""
            ),
        );
    }

    fn marker(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("ran-{name}"))
    }

    /// The hosts the helper was asked about (one line per run).
    fn runs(&self, name: &str) -> Vec<String> {
        std::fs::read_to_string(self.marker(name))
            .map(|s| s.lines().map(str::to_owned).collect())
            .unwrap_or_default()
    }

    fn fetcher(&self, registry: &Registry) -> OciFetcher {
        OciFetcher::builder()
            .docker_config_dir(Some(self.dir.path().join("docker")))
            .credential_helper_path(self.bin())
            .insecure_hosts([registry.host()])
            .backoff(
                Backoff::default()
                    .with_max_attempts(2)
                    .with_initial(Duration::from_millis(20))
                    .with_max_interval(Duration::from_millis(50)),
            )
            .build()
            .unwrap()
    }
}

fn request(url: &str) -> FetchRequest {
    FetchRequest::new(ModuleUrl::parse(url).unwrap(), Instant::now() + TIMEOUT)
}

async fn fetch(f: &OciFetcher, req: &FetchRequest) -> Result<Vec<u8>, Error> {
    let mut sink = Vec::new();
    f.fetch(req, &mut sink).await?;
    Ok(sink)
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

async fn private_image(registry: &Registry, repo: &str, seed: u64) -> (String, Vec<u8>) {
    let module = sample_module(9_000, seed);
    let pushed = images::push_oci_image(registry, repo, "v1", &module).await;
    (pushed.url, module)
}

#[tokio::test]
async fn per_registry_helper_is_used_once_per_process() {
    let registry = Registry::start(RegistryKind::BasicAuth);
    let (url, module) = private_image(&registry, "h/one", 1).await;
    let op = Operator::new();
    op.answering("good", TEST_USER, TEST_PASSWORD);
    op.config(&serde_json::json!({ "credHelpers": { registry.host(): "good" } }));
    let f = op.fetcher(&registry);
    assert_eq!(fetch(&f, &request(&url)).await.unwrap(), module);
    assert!(f.resolve(&request(&url)).await.unwrap().is_some());
    // Asked once, about this registry's host; the answer kept in memory.
    assert_eq!(op.runs("good"), vec![registry.host()]);
}

#[tokio::test]
async fn a_refused_helper_answer_is_not_kept() {
    // A helper whose credential was rotated (an expired ECR token): the
    // registry refuses the kept answer, the next fetch asks the helper again.
    let registry = Registry::start(RegistryKind::BasicAuth);
    let (url, module) = private_image(&registry, "h/rotate", 13).await;
    let op = Operator::new();
    op.answering("rotating", TEST_USER, "an-expired-password");
    op.config(&serde_json::json!({ "credHelpers": { registry.host(): "rotating" } }));
    let f = op.fetcher(&registry);
    let e = fetch(&f, &request(&url)).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unauthorized, "{e}");
    op.answering("rotating", TEST_USER, TEST_PASSWORD);
    assert_eq!(fetch(&f, &request(&url)).await.unwrap(), module);
    assert_eq!(op.runs("rotating").len(), 2);
    // Accepted answers are kept: no third run.
    assert_eq!(fetch(&f, &request(&url)).await.unwrap(), module);
    assert_eq!(op.runs("rotating").len(), 2);
}

#[tokio::test]
async fn creds_store_is_used_and_cred_helpers_beat_it() {
    let registry = Registry::start(RegistryKind::BasicAuth);
    let (url, module) = private_image(&registry, "h/store", 2).await;
    let op = Operator::new();
    op.answering("store", TEST_USER, TEST_PASSWORD);
    op.config(&serde_json::json!({ "credsStore": "store", "auths": {} }));
    assert_eq!(
        fetch(&op.fetcher(&registry), &request(&url)).await.unwrap(),
        module
    );
    assert_eq!(op.runs("store"), vec![registry.host()]);

    let op = Operator::new();
    op.answering("store", TEST_USER, "the-store-is-wrong");
    op.answering("per-registry", TEST_USER, TEST_PASSWORD);
    op.config(&serde_json::json!({
        "credsStore": "store",
        "credHelpers": { format!("https://{}/v1/", registry.host()): "per-registry" },
    }));
    assert_eq!(
        fetch(&op.fetcher(&registry), &request(&url)).await.unwrap(),
        module
    );
    assert_eq!(op.runs("per-registry"), vec![registry.host()]);
    assert!(op.runs("store").is_empty(), "credsStore ran");
}

#[tokio::test]
async fn a_helper_for_another_registry_is_not_run() {
    let registry = Registry::start(RegistryKind::BasicAuth);
    let (url, module) = private_image(&registry, "h/other", 3).await;
    let op = Operator::new();
    op.answering("other", TEST_USER, "the-other-registrys-password");
    op.answering("mine", TEST_USER, TEST_PASSWORD);
    op.config(&serde_json::json!({
        "credHelpers": { "other.example:5000": "other", registry.host(): "mine" },
    }));
    assert_eq!(
        fetch(&op.fetcher(&registry), &request(&url)).await.unwrap(),
        module
    );
    assert_eq!(op.runs("mine"), vec![registry.host()]);
    assert!(
        !op.marker("other").exists(),
        "the other registry's helper ran"
    );
    // Only another registry's helper: not run, the `auths` entry is used.
    let op = Operator::new();
    op.answering("other", TEST_USER, TEST_PASSWORD);
    op.config(&serde_json::json!({
        "credHelpers": { "other.example:5000": "other" },
        "auths": { registry.host(): { "auth": b64(&format!("{TEST_USER}:{TEST_PASSWORD}")) } },
    }));
    assert_eq!(
        fetch(&op.fetcher(&registry), &request(&url)).await.unwrap(),
        module
    );
    assert!(
        !op.marker("other").exists(),
        "the other registry's helper ran"
    );
}

#[tokio::test]
async fn a_pull_secret_beats_the_operators_helper() {
    let registry = Registry::start(RegistryKind::BasicAuth);
    let (url, module) = private_image(&registry, "h/secret", 4).await;
    let op = Operator::new();
    op.answering("good", TEST_USER, TEST_PASSWORD);
    op.config(
        &serde_json::json!({ "credHelpers": { registry.host(): "good" }, "credsStore": "good" }),
    );
    let with = |json: Vec<u8>| request(&url).with_pull_secret(Some(PullSecret::new(json)));
    // Control: without a secret, the operator's helper answers.
    assert_eq!(
        fetch(&op.fetcher(&registry), &request(&url)).await.unwrap(),
        module
    );
    assert_eq!(op.runs("good"), vec![registry.host()]);
    std::fs::remove_file(op.marker("good")).unwrap();
    let f = op.fetcher(&registry);
    assert_eq!(
        fetch(&f, &with(registry.docker_config_json()))
            .await
            .unwrap(),
        module
    );
    // A wrong secret is not rescued by the operator's helper.
    let wrong = registry::docker_config_json(&registry.host(), TEST_USER, "nope");
    let e = fetch(&f, &with(wrong)).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unauthorized, "{e}");
    // A secret naming helpers runs none of them (and not the operator's either).
    let helpers = serde_json::to_vec(&serde_json::json!({
        "credsStore": "good", "credHelpers": { registry.host(): "good" }, "auths": {}
    }))
    .unwrap();
    let e = fetch(&f, &with(helpers)).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unauthorized, "{e}");
    assert!(
        !op.marker("good").exists(),
        "a helper ran despite the pull secret"
    );
}

#[tokio::test]
async fn a_failing_helper_is_named_and_its_stderr_quoted_without_secrets() {
    let registry = Registry::start(RegistryKind::BasicAuth);
    let (url, _) = private_image(&registry, "h/fail", 5).await;
    let op = Operator::new();
    op.helper(
        "broken",
        "echo 'keychain locked; token=ZXlKaGJHY2lPaUpGVXpJMU5pSjkuc2VjcmV0' >&2\nexit 7",
    );
    op.config(&serde_json::json!({ "credHelpers": { registry.host(): "broken" } }));
    let e = fetch(&op.fetcher(&registry), &request(&url))
        .await
        .unwrap_err();
    let shown = e.to_string();
    assert!(shown.contains("docker-credential-broken"), "{shown}");
    assert!(shown.contains("keychain locked"), "{shown}");
    assert!(
        !shown.contains("ZXlKaGJHY2lPaUpGVXpJMU5pSjkuc2VjcmV0"),
        "{shown}"
    );
    // A helper that is not installed is named too.
    op.config(&serde_json::json!({ "credsStore": "absent" }));
    let e = fetch(&op.fetcher(&registry), &request(&url))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("docker-credential-absent"), "{e}");
}

/// Processes whose process group is `pgid` (the helper and its children).
fn group_members(pgid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid pgrp ...
        let after = &stat[stat.rfind(')').map_or(0, |i| i + 1)..];
        if after.split_whitespace().nth(2).and_then(|g| g.parse().ok()) == Some(pgid) {
            out.push(pid);
        }
    }
    out
}

/// Waits (polling, with a deadline) until no process is left in `pgid`.
fn assert_group_gone(pgid: i32) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = group_members(pgid);
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "helper processes left: {left:?}");
        std::thread::yield_now();
    }
}

fn read_pid(path: &Path) -> i32 {
    std::fs::read_to_string(path)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_hanging_helper_ends_within_the_deadline_and_leaves_no_process() {
    let registry = Registry::start(RegistryKind::BasicAuth);
    let (url, _) = private_image(&registry, "h/hang", 6).await;
    let op = Operator::new();
    let pidfile = op.dir.path().join("pid");
    op.helper(
        "hang",
        &format!(
            "echo $$ > '{}'\nsleep 1000 &\nsleep 1000\n",
            pidfile.display()
        ),
    );
    op.config(&serde_json::json!({ "credHelpers": { registry.host(): "hang" } }));
    let f = op.fetcher(&registry);
    let started = Instant::now();
    let req = FetchRequest::new(
        ModuleUrl::parse(&url).unwrap(),
        started + Duration::from_secs(2),
    );
    let e = fetch(&f, &req).await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    assert!(took < Duration::from_secs(4), "took {took:?}");
    assert_group_gone(read_pid(&pidfile));
}

#[tokio::test]
async fn a_flooding_helper_is_refused_and_killed() {
    let registry = Registry::start(RegistryKind::BasicAuth);
    let (url, _) = private_image(&registry, "h/flood", 7).await;
    let op = Operator::new();
    let pidfile = op.dir.path().join("pid");
    op.helper(
        "flood",
        &format!(
            "echo $$ > '{}'\nwhile :; do echo xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx; done",
            pidfile.display()
        ),
    );
    op.config(&serde_json::json!({ "credsStore": "flood" }));
    let e = fetch(&op.fetcher(&registry), &request(&url))
        .await
        .unwrap_err();
    let shown = e.to_string();
    assert!(shown.contains("docker-credential-flood"), "{shown}");
    assert!(
        shown.contains(&wasm_fetch_oci::MAX_HELPER_OUTPUT.to_string()),
        "{shown}"
    );
    assert_group_gone(read_pid(&pidfile));
}

#[tokio::test]
async fn identity_tokens_are_exchanged_at_the_realm() {
    let registry = Registry::start(RegistryKind::TokenAuth);
    let (url, module) = private_image(&registry, "t/ident", 8).await;
    let tokens = registry.token_server().unwrap();
    // `az acr login`'s form, in the operator's config.
    let op = Operator::new();
    op.config(&serde_json::json!({ "auths": { registry.host(): {
        "auth": b64("00000000-0000-0000-0000-000000000000:"),
        "identitytoken": TEST_REFRESH_TOKEN,
    } } }));
    assert_eq!(
        fetch(&op.fetcher(&registry), &request(&url)).await.unwrap(),
        module
    );
    let posts: Vec<_> = tokens
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .collect();
    assert!(
        posts
            .iter()
            .any(|r| r.form.contains("grant_type=refresh_token")
                && r.form
                    .contains(&format!("refresh_token={TEST_REFRESH_TOKEN}"))
                && r.form.contains("scope=repository%3At%2Fident%3Apull")
                && r.form.contains("service=wasm-cache-test")
                && r.authorization.is_none()),
        "{posts:?}"
    );
    // From a helper (user `<token>`) and from a pull secret too.
    let op = Operator::new();
    op.answering("acr", "<token>", TEST_REFRESH_TOKEN);
    op.config(&serde_json::json!({ "credsStore": "acr" }));
    assert_eq!(
        fetch(&op.fetcher(&registry), &request(&url)).await.unwrap(),
        module
    );
    let secret = serde_json::to_vec(&serde_json::json!({ "auths": { registry.host(): {
        "identitytoken": TEST_REFRESH_TOKEN } } }))
    .unwrap();
    let f = Operator::new().fetcher(&registry);
    let req = request(&url).with_pull_secret(Some(PullSecret::new(secret)));
    assert_eq!(fetch(&f, &req).await.unwrap(), module);
    // A wrong refresh token: refused by the token service, not leaked.
    let secret = serde_json::to_vec(&serde_json::json!({ "auths": { registry.host(): {
        "identitytoken": "revoked-refresh-token-0123456789" } } }))
    .unwrap();
    let req = request(&url).with_pull_secret(Some(PullSecret::new(secret)));
    let e = fetch(&f, &req).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unauthorized, "{e}");
    assert!(
        !format!("{e} {e:?}").contains("revoked-refresh-token"),
        "{e:?}"
    );
}

#[tokio::test]
async fn registry_tokens_are_used_directly() {
    let registry = Registry::start(RegistryKind::TokenAuth);
    let (url, module) = private_image(&registry, "t/direct", 9).await;
    let tokens = registry.token_server().unwrap();
    let token = tokens.token_for("repository:t/direct:pull");
    let before = tokens.requests().len();
    let secret = serde_json::to_vec(&serde_json::json!({ "auths": { registry.host(): {
        "registrytoken": token } } }))
    .unwrap();
    let f = Operator::new().fetcher(&registry);
    let req = request(&url).with_pull_secret(Some(PullSecret::new(secret)));
    assert_eq!(fetch(&f, &req).await.unwrap(), module);
    // Sent as the bearer: the token service was not asked.
    assert_eq!(tokens.requests().len(), before);
}

#[tokio::test]
async fn legacy_dockercfg_secrets_are_accepted() {
    let registry = Registry::start(RegistryKind::BasicAuth);
    let (url, module) = private_image(&registry, "h/legacy", 10).await;
    let secret = serde_json::to_vec(&serde_json::json!({
        format!("http://{}/v1/", registry.host()): {
            "auth": b64(&format!("{TEST_USER}:{TEST_PASSWORD}")),
            "email": "ops@example.com",
        }
    }))
    .unwrap();
    let f = Operator::new().fetcher(&registry);
    let req = request(&url).with_pull_secret(Some(PullSecret::new(secret)));
    assert_eq!(fetch(&f, &req).await.unwrap(), module);
}

/// A `MakeWriter` collecting everything logged.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test]
async fn secrets_appear_in_no_log_at_any_verbosity() {
    // The process-wide subscriber (a thread-scoped one can miss events when
    // other test threads register the same callsites first); the other
    // tests' logs land here too, and must be as clean.
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(captured.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let basic = Registry::start(RegistryKind::BasicAuth);
    let (url, module) = private_image(&basic, "h/logs", 11).await;
    let op = Operator::new();
    op.answering("good", TEST_USER, TEST_PASSWORD);
    op.config(&serde_json::json!({ "credHelpers": { basic.host(): "good" } }));
    assert_eq!(
        fetch(&op.fetcher(&basic), &request(&url)).await.unwrap(),
        module
    );
    let req = request(&url).with_pull_secret(Some(PullSecret::new(basic.docker_config_json())));
    assert_eq!(fetch(&op.fetcher(&basic), &req).await.unwrap(), module);

    let token = Registry::start(RegistryKind::TokenAuth);
    let (turl, tmodule) = private_image(&token, "t/logs", 12).await;
    let op = Operator::new();
    op.config(
        &serde_json::json!({ "auths": { token.host(): { "identitytoken": TEST_REFRESH_TOKEN } } }),
    );
    assert_eq!(
        fetch(&op.fetcher(&token), &request(&turl)).await.unwrap(),
        tmodule
    );

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    // The sources are logged...
    assert!(
        logs.contains("credHelpers") && logs.contains("docker-credential-good"),
        "{logs}"
    );
    assert!(
        logs.contains("pull secret") && logs.contains("identity token"),
        "{logs}"
    );
    // ...never the credentials.
    for secret in [
        TEST_PASSWORD.to_owned(),
        b64(&format!("{TEST_USER}:{TEST_PASSWORD}")),
        TEST_REFRESH_TOKEN.to_owned(),
    ] {
        assert!(!logs.contains(&secret), "a secret was logged");
    }
}
