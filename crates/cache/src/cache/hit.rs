//! The hit path: index lookup, the existence check, lazy re-verification of
//! recovered content, the checksum record a hit makes, and batched last-use
//! records.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tracing::warn;
use wasm_cache_core::{
    IndexEvent, Lookup, LookupRequest, ModuleKey, ModuleUrl, Sha256Digest, Timestamp,
};
use wasm_cache_signature::TrustPolicy;
use wasm_store_fs::{Servable, StoreError};

use super::{Inner, TOUCH_BATCH, TOUCH_EVERY, TOUCH_MAX, TOUCH_WAIT};
use crate::{Error, GetRequest};

/// The outcome of [`Inner::try_hit`].
pub(super) enum Hit {
    /// Served from the cache.
    Served {
        /// The module's file and size.
        file: Servable,
        /// The entry's checksum.
        checksum: Sha256Digest,
        /// The sha256 of the module's bytes.
        content: Sha256Digest,
        /// The entry's key.
        key: ModuleKey,
    },
    /// Not cached (or its file vanished or failed verification): fetch it
    /// under this module name, checking this checksum if one is pinned.
    Miss {
        name: String,
        expected: Option<Sha256Digest>,
    },
}

impl Inner {
    /// REFERENCE §3 steps 1-4 and the existence check. A hit records the
    /// checksum for the URL and the asking resource's version, exactly as a
    /// download does (§3.4, Istio's `touchEntry`); that writes to the journal
    /// only when the record changed.
    ///
    /// Under a trust policy, a hit is served only once the digest is verified
    /// (recorded earlier, or checked now by fetching the signature only), and
    /// a hit that fails records nothing.
    pub(super) async fn try_hit(
        self: &Arc<Self>,
        url: &ModuleUrl,
        checksum: Option<Sha256Digest>,
        req: &GetRequest,
        policy: Option<&Arc<TrustPolicy>>,
    ) -> Result<Hit, Error> {
        let lookup = LookupRequest::new(
            url,
            checksum,
            &req.resource_name,
            &req.resource_version,
            req.pull_policy,
        );
        // Read before the lookup (see `hot`): the answer is remembered with it.
        let stamp = self.stamp();
        let now = self.now();
        Ok(match self.index.lookup(&lookup, now) {
            Lookup::Hit { key, content } => match self.serve(&key, content).await? {
                Some(file) => {
                    if let Some(policy) = policy {
                        let deadline = Instant::now() + req.timeout;
                        self.ensure_verified(url, key.checksum, policy, req, deadline)
                            .await?;
                    }
                    self.note_touch(&key, now);
                    // Without a pin, the lookup took the checksum from the
                    // URL's record and left that record saying exactly what
                    // `record_hit` would write (this checksum, this resource
                    // version): only a pinned hit can change it.
                    if (checksum.is_some() || url.pinned_digest().is_some())
                        && let Some(event) = self.index.record_hit(&lookup, &key)
                    {
                        self.journal_append(&event);
                    }
                    if policy.is_none() {
                        self.remember_hit(req, stamp, &key, content, &file, now);
                    }
                    Hit::Served {
                        file,
                        checksum: key.checksum,
                        content,
                        key,
                    }
                }
                None => Hit::Miss {
                    name: key.name,
                    expected: checksum.or_else(|| url.pinned_digest()),
                },
            },
            Lookup::Miss { name, expected } => Hit::Miss { name, expected },
            other => {
                return Err(Error::Internal(format!(
                    "unknown index lookup outcome {other:?}"
                )));
            }
        })
    }

    /// Remembers that `key` was used now, for the next batch of last-use
    /// records (the index itself was touched by the lookup).
    pub(super) fn note_touch(self: &Arc<Self>, key: &ModuleKey, now: Timestamp) {
        if self.pending_touch(key, now) {
            self.count_touch();
        }
    }

    /// Adds `key`'s use at `at` to the next batch of last-use records;
    /// returns whether `key` was not pending yet.
    pub(super) fn pending_touch(&self, key: &ModuleKey, at: Timestamp) -> bool {
        if let Some(mut pending) = self.touches.get_mut(key) {
            *pending = (*pending).max(at);
            return false;
        }
        let mut new = false;
        self.touches
            .entry(key.clone())
            .and_modify(|pending| *pending = (*pending).max(at))
            .or_insert_with(|| {
                new = true;
                at
            });
        new
    }

    /// Counts one more module pending for the journal and starts a batch
    /// when [`TOUCH_BATCH`] are pending and [`TOUCH_EVERY`] has passed (or
    /// [`TOUCH_MAX`] are pending).
    pub(super) fn count_touch(self: &Arc<Self>) {
        let pending = self.touches_pending.fetch_add(1, Ordering::Relaxed) + 1;
        if pending >= TOUCH_BATCH && (pending >= TOUCH_MAX || self.touch_batch_due()) {
            // Taken now, so the hits until the batch runs start the next one.
            self.touches_pending.store(0, Ordering::Relaxed);
            let me = Arc::clone(self);
            tokio::task::spawn_blocking(move || {
                me.flush_touches(Instant::now() + TOUCH_WAIT);
            });
        }
    }

    /// Whether [`TOUCH_EVERY`] has passed since the last batch (and if so,
    /// counts from now). A load only, unless it has.
    fn touch_batch_due(&self) -> bool {
        let now = self.uptime_millis();
        let last = self.touches_flushed.load(Ordering::Relaxed);
        let every = u64::try_from(TOUCH_EVERY.as_millis()).unwrap_or(u64::MAX);
        now.saturating_sub(last) >= every
            && self
                .touches_flushed
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// Appends the pending last-use updates as one batch (one `write`, no
    /// `fsync`: losing them to a power cut only makes modules look older).
    /// Best effort: a failure is a warning, never an error.
    pub(super) fn flush_touches(&self, deadline: Instant) {
        self.touches_pending.store(0, Ordering::Relaxed);
        self.fold_hot();
        let keys: Vec<ModuleKey> = self.touches.iter().map(|e| e.key().clone()).collect();
        let events: Vec<IndexEvent> = keys
            .iter()
            .filter_map(|k| self.touches.remove(k))
            .map(|(key, at)| IndexEvent::Touch { key, at })
            .collect();
        if events.is_empty() {
            return;
        }
        let appended = self
            .journal
            .lock_shared(deadline)
            .and_then(|shared| shared.append(&events, false));
        if let Err(e) = appended {
            // The index in memory has them; a later compaction persists them.
            warn!(error = %e, records = events.len(), "could not record last use of wasm modules in the journal");
        }
    }

    /// The entry's file if it can be served: verified by this process
    /// (re-hashed once if it was recovered from disk or changed behind our
    /// back) and still there. Otherwise the entry is dropped and `None`
    /// returned (a miss, never a dangling path).
    pub(super) async fn serve(
        self: &Arc<Self>,
        key: &ModuleKey,
        content: Sha256Digest,
    ) -> Result<Option<Servable>, Error> {
        // The common case: verified, and (by the directory watch, or a stat)
        // there.
        if let Some(file) = self.store.servable(&content) {
            return Ok(Some(file));
        }
        // The store is the one record of what this process has re-hashed:
        // content recovered from disk, written by another process, replaced
        // behind our back or found wrong by `verify` is checked (again)
        // before it is served.
        let known = self.store.get(&content);
        if !known.as_ref().is_some_and(|m| m.verified)
            && (known.is_some() || self.store.contains(&content))
        {
            let me = Arc::clone(self);
            let ok = tokio::task::spawn_blocking(move || me.store.verify(&content))
                .await
                .map_err(|e| Error::Internal(format!("verify task failed: {e}")))?;
            match ok {
                Ok(true) => {}
                Ok(false) | Err(StoreError::NotFound { .. }) => {
                    warn!(module = %key.redacted_name(), content = %content, "cached module failed verification; fetching again");
                    self.drop_content(&content);
                    return Ok(None);
                }
                Err(e) => return Err(e.into()),
            }
        }
        if let Some(file) = self.store.servable(&content) {
            return Ok(Some(file));
        }
        if self.store.contains(&content) {
            // Verified and unverified again since (the file changed as we
            // looked): fetch it again rather than serve it unchecked.
            return Ok(None);
        }
        let path: PathBuf = self.store.path_of(&content);
        warn!(module = %key.redacted_name(), path = %path.display(), "cached module file vanished; fetching again");
        self.forget(key);
        Ok(None)
    }

    /// Drops an entry from the index (and journal), leaving files alone.
    pub(super) fn forget(&self, key: &ModuleKey) {
        if let Some(e) = self.index.remove(key) {
            self.forget_url_hints(&e.urls);
            self.journal_append(&IndexEvent::Remove { key: key.clone() });
            self.meters.entries(self.index.len());
        }
    }

    /// Drops every entry of a content digest and its file, deciding under the
    /// store's lock of that content (so a concurrent commit of it comes
    /// entirely before, and is dropped too, or entirely after); the removals
    /// are journaled once that lock is released.
    pub(super) fn drop_content(&self, content: &Sha256Digest) {
        let mut events = Vec::new();
        let removed = self.store.remove_if(content, || {
            events = self.forget_content(content);
            true
        });
        if let Err(e) = removed {
            warn!(error = %e, "removing a corrupt module failed");
        }
        self.journal_append_all(&events);
    }

    /// Drops every entry of a content digest from the index, leaving the file
    /// alone, and returns the journal records saying so: for a caller about
    /// to delete the file under the store's lock of that content, which
    /// journals them after releasing it.
    pub(super) fn forget_content(&self, content: &Sha256Digest) -> Vec<IndexEvent> {
        let mut events = Vec::new();
        for e in self.index.entries() {
            if e.content == *content
                && let Some(e) = self.index.remove(&e.key)
            {
                self.forget_url_hints(&e.urls);
                events.push(IndexEvent::Remove { key: e.key });
            }
        }
        self.meters.entries(self.index.len());
        events
    }
}
