//! Single flight: one download per module and credential set, in this
//! process (`Cache::single_flight`, keyed by `FlightKey`) and across
//! processes (`Inner::lock_flight`, the store's key lock named by `flight_key`).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;
use tracing::{debug, info};
use wasm_cache_core::{ModuleUrl, PullSecret, Sha256Digest};
use wasm_cache_signature::KeyFingerprint;

use super::hit::Hit;
use super::{Cache, Inner, Published};
use crate::{Error, GetRequest};

pub(super) type Flight = Arc<OnceCell<Result<Published, Error>>>;

/// What callers must have in common to share one download and its outcome:
/// the URL, the checksum it must have, and the credentials it is fetched
/// with (a caller with a valid pull secret must never receive the failure of
/// a caller with a wrong one, nor the reverse), and the trust policy (a
/// caller without one must never receive another's signature failure, and
/// a caller with one never a module no key of its policy verified).
pub(super) type FlightKey = (
    String,
    Option<Sha256Digest>,
    Option<PullSecret>,
    Option<(Vec<KeyFingerprint>, bool)>,
);

/// The name of the cross-process lock of one download: the URL as given, the
/// checksum it must have and, like the in-process [`FlightKey`], the
/// credentials (by a hash of the pull secret, never the secret), so a process
/// downloading with one caller's credentials never makes a caller with other
/// credentials wait for it and then take its module as a hit.
pub(super) fn flight_key(
    url: &str,
    expected: Option<Sha256Digest>,
    secret: Option<&PullSecret>,
) -> String {
    let mut key = match expected {
        Some(d) => format!("{url}\n{}", d.to_hex()),
        None => format!("{url}\n"),
    };
    if let Some(secret) = secret {
        key.push('\n');
        key.push_str(&sha256_hex(secret.expose()));
    }
    key
}

/// The sha256 of `bytes`, as 64 lowercase hex characters (names derived
/// from secrets or URLs: flight keys, lookup hints).
pub(super) fn sha256_hex(bytes: &[u8]) -> String {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
    Sha256Digest::from_bytes(out).to_hex()
}

impl Cache {
    /// Downloads once for every concurrent caller with the same [`FlightKey`].
    ///
    /// Each caller keeps its own deadline: it stops waiting when its own
    /// timeout is over, and if the download it waited for ran out of the
    /// leader's time while it still has some, it tries again itself.
    pub(super) async fn single_flight(
        &self,
        url: &ModuleUrl,
        name: &str,
        expected: Option<Sha256Digest>,
        checksum: Option<Sha256Digest>,
        req: &GetRequest,
    ) -> Result<Published, Error> {
        let deadline = tokio::time::Instant::now() + req.timeout;
        let policy = req.trust.as_ref().or(self.inner.opts.trust.as_ref());
        let key: FlightKey = (
            url.as_str().to_owned(),
            expected,
            req.pull_secret.clone(),
            policy.map(|p| (p.fingerprints(), p.requires_reference())),
        );
        loop {
            let flight = self.inner.flights.entry(key.clone()).or_default().clone();
            let led = AtomicBool::new(false);
            let waited = tokio::time::timeout_at(
                deadline,
                flight.get_or_init(|| {
                    led.store(true, Ordering::Relaxed);
                    let inner = Arc::clone(&self.inner);
                    async move {
                        // One download per module across processes too:
                        // wait (for this module only, bounded by the
                        // deadline) for another process fetching it, then
                        // read what it recorded.
                        let _key_lock = inner
                            .lock_flight(
                                url,
                                expected,
                                req.pull_secret.as_ref(),
                                deadline.into_std(),
                            )
                            .await?;
                        inner.sync_journal();
                        // Checked again inside the flight: a flight that
                        // finished between our lookup and now has indexed and
                        // recorded the module, so this is a hit rather than a
                        // second download.
                        match inner.try_hit(url, checksum, req, policy).await? {
                            Hit::Served {
                                file,
                                checksum,
                                content,
                                key,
                            } => Ok(Published {
                                path: file.path,
                                checksum,
                                key,
                                content,
                                downloaded: false,
                            }),
                            Hit::Miss { .. } => {
                                inner
                                    .fetch_and_publish(
                                        url,
                                        name.to_owned(),
                                        expected,
                                        req,
                                        deadline.into_std(),
                                        policy,
                                    )
                                    .await
                            }
                        }
                    }
                }),
            )
            .await;
            let Ok(result) = waited else {
                // Our own deadline passed while another caller's download
                // was still running: it goes on for its own callers.
                return Err(wasm_cache_core::Error::Timeout {
                    url: url.redacted(),
                    elapsed: req.timeout,
                }
                .into());
            };
            let result = result.clone();
            self.inner
                .flights
                .remove_if(&key, |_, f| Arc::ptr_eq(f, &flight));
            let theirs_timed_out = !led.load(Ordering::Relaxed)
                && matches!(&result, Err(e) if e.kind() == wasm_cache_core::ErrorKind::Timeout);
            if theirs_timed_out && tokio::time::Instant::now() < deadline {
                debug!(url = %url, "the shared download ran out of its caller's time; trying again");
                continue;
            }
            return result;
        }
    }
}

impl Inner {
    /// Takes the cross-process lock of the download of `url`, waiting (for
    /// another process fetching the same module) until `deadline` at most,
    /// and saying so once at info level.
    pub(super) async fn lock_flight(
        self: &Arc<Self>,
        url: &ModuleUrl,
        expected: Option<Sha256Digest>,
        secret: Option<&PullSecret>,
        deadline: Instant,
    ) -> Result<wasm_store_fs::FileLock, Error> {
        let key = flight_key(url.as_str(), expected, secret);
        // A little before the request's own deadline, so that the caller
        // learns what it waited for rather than only that time ran out.
        let margin = Duration::from_millis(100);
        let deadline = deadline.checked_sub(margin).unwrap_or(deadline);
        let store = self.store.clone();
        let redacted = url.redacted();
        tokio::task::spawn_blocking(move || {
            store.lock_key(&key, deadline, &mut |lock: &Path| {
                info!(url = %redacted, lock = %lock.display(), "waiting for another process downloading this module");
            })
        })
        .await
        .map_err(|e| Error::Internal(format!("lock task failed: {e}")))?
        .map_err(Error::from)
    }
}
