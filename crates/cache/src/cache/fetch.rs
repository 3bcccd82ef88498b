//! The miss path after the flight: resolve, look again, adopt an orphaned
//! file, stream into an ingest, commit and index.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};
use wasm_cache_core::{FetchRequest, IndexEvent, ModuleKey, ModuleUrl, Sha256Digest};
use wasm_cache_signature::TrustPolicy;

use super::{Inner, Published};
use crate::metrics::FetchResult;
use crate::{Error, GetRequest};

pub(super) fn result_label(e: &wasm_cache_core::Error) -> FetchResult {
    use wasm_cache_core::ErrorKind as K;
    match e.kind() {
        K::Integrity => FetchResult::ChecksumMismatched,
        K::Manifest => FetchResult::ManifestFailure,
        K::InvalidModule | K::Storage | K::InvalidInput => FetchResult::FetchFailure,
        _ => FetchResult::DownloadFailure,
    }
}

/// The store's ingest as the fetcher's sink; takes on the content digest
/// check a fetcher offers ([`ModuleSink::verify_sha256`]), which the cache
/// then does with the store's hash before committing.
pub(super) struct VerifyingSink<'a> {
    ingest: &'a mut wasm_store_fs::Ingest,
    content: Option<Sha256Digest>,
}

impl wasm_cache_core::ModuleSink for VerifyingSink<'_> {
    fn write(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        wasm_cache_core::ModuleSink::write(self.ingest, chunk)
    }

    fn verify_sha256(&mut self, digest: Sha256Digest) -> bool {
        self.content = Some(digest);
        true
    }

    fn restart(&mut self) -> bool {
        self.content = None;
        wasm_cache_core::ModuleSink::restart(self.ingest)
    }
}

impl Inner {
    pub(super) async fn fetch_and_publish(
        self: Arc<Self>,
        url: &ModuleUrl,
        name: String,
        expected: Option<Sha256Digest>,
        req: &GetRequest,
        deadline: Instant,
        policy: Option<&Arc<TrustPolicy>>,
    ) -> Result<Published, Error> {
        let fetcher = self.fetcher_for(url)?;
        let mut freq = FetchRequest::new(url.clone(), deadline)
            .with_pull_secret(req.pull_secret.clone())
            .with_max_size(self.opts.max_module_size);
        let resolved = fetcher.resolve(&freq).await.inspect_err(|e| {
            debug!(url = %url, error = %e, "resolve failed");
            self.meters.fetch(FetchResult::ManifestFailure);
        })?;
        if let Some(digest) = resolved {
            if let Some(want) = expected.filter(|w| *w != digest) {
                self.meters.fetch(FetchResult::ChecksumMismatched);
                return Err(wasm_cache_core::Error::ChecksumMismatch {
                    url: url.redacted(),
                    actual: digest.to_hex(),
                    expected: want.to_hex(),
                }
                .into());
            }
            // Under a trust policy the manifest digest is verified before
            // anything is served or downloaded: a failure fetches no layer.
            if let Some(policy) = policy {
                self.ensure_verified(url, digest, policy, req, deadline)
                    .await?;
            }
            // REFERENCE §3 step 5: look again before downloading any layer.
            let key = ModuleKey::new(name.clone(), digest);
            let now = self.now();
            if let Some(content) = self.index.touch(&key, now)
                && let Some(file) = self.serve(&key, content).await?
            {
                self.note_touch(&key, now);
                if url.records_checksum() {
                    self.record(url, digest, req);
                }
                return Ok(Published {
                    path: file.path,
                    checksum: digest,
                    key,
                    content,
                    downloaded: false,
                });
            }
            freq = freq.with_digest(Some(digest));
        }
        // The pinned module's file may already be on disk without an entry
        // (its journal record lost, e.g. to a full disk, or written by a
        // process whose record this one has not read): adopt it after one
        // re-hash instead of downloading it again.
        if resolved.is_none()
            && let Some(want) = expected
            && let Some(published) = self.adopt(url, &name, want, req).await
        {
            // Adopted like a hit: under a trust policy, served only verified.
            if let Some(policy) = policy {
                self.ensure_verified(url, want, policy, req, deadline)
                    .await?;
            }
            return Ok(published);
        }
        // Content-addressed sources are checked by digest above; otherwise the
        // store checks the module's own hash.
        let store_expected = if resolved.is_none() { expected } else { None };
        let mut ingest = self
            .store
            .ingest(store_expected, self.opts.max_module_size)
            .inspect_err(|_| self.meters.fetch(FetchResult::FetchFailure))?;
        let mut sink = VerifyingSink {
            ingest: &mut ingest,
            content: None,
        };
        let fetched = fetcher.fetch(&freq, &mut sink).await;
        let content_expected = sink.content;
        // A fetcher that handed the content digest check to us (an OCI raw
        // layer: its digest is the module's) gets it here, from the store's
        // own hash: one SHA-256 pass over the bytes.
        let fetched = fetched.and_then(|f| match content_expected {
            Some(want) if ingest.digest() != want => Err(wasm_cache_core::Error::DigestMismatch {
                url: url.redacted(),
                expected: want.to_prefixed(),
                actual: ingest.digest().to_prefixed(),
            }),
            _ => Ok(f),
        });
        let fetched = match fetched {
            Ok(f) => f,
            Err(e) => {
                // A limit or check of the store surfaces as a sink error; report it as itself.
                let e = match ingest.into_error() {
                    Some(store_err) => store_err.into_core_error(&url.redacted()),
                    None => e,
                };
                self.meters.fetch(result_label(&e));
                debug!(url = %url, error = %e, "fetch failed");
                return Err(e.into());
            }
        };
        // Not content-addressed: the module's own sha256 is the signed digest,
        // known only now that it is hashed; verified before the commit, so a
        // failure leaves nothing in the store (the temporary file is dropped).
        if resolved.is_none()
            && let Some(policy) = policy
        {
            self.ensure_verified(url, ingest.digest(), policy, req, deadline)
                .await?;
        }
        let me = Arc::clone(&self);
        let url_s = url.as_str().to_owned();
        let redacted = url.redacted();
        // The URL's checksum record (REFERENCE §3 step 7) goes into the same
        // durable append as the entry: one journal sync per download, not two.
        let record_for = url.records_checksum().then(|| {
            let who = (req.resource_name.clone(), req.resource_version.clone());
            (url.as_str().to_owned(), who)
        });
        let published = tokio::task::spawn_blocking(move || {
            // The journal's lock, shared, from before the rename to after the
            // append: a purge in another process (which holds it exclusively)
            // sees the file only with its entry. Best effort: a lock held too
            // long by someone else costs that guarantee, not the module.
            let shared = me
                .journal
                .lock_shared(deadline.max(Instant::now() + Duration::from_millis(200)))
                .inspect_err(
                    |e| warn!(error = %e, "publishing a wasm module without the journal's lock"),
                )
                .ok();
            // Commit and index under the store's lock of the content, so a
            // purge cannot delete the file between the two (a commit that
            // finds the file already in place must not lose it to a purge
            // that saw no entry for it before the index insert).
            let (committed, (checksum, key, insert)) = ingest
                .commit_then(|committed| {
                    // Read after the commit (an fsync can take a while): a caller
                    // that missed while it ran and waits for this flight asked no
                    // earlier than this, so its grace period is counted from its
                    // own request.
                    let now = me.now();
                    let checksum = resolved.or(fetched.digest).unwrap_or(committed.digest);
                    let key = ModuleKey::new(name, checksum);
                    me.index.insert(
                        key.clone(),
                        committed.digest,
                        committed.size,
                        Some(&url_s),
                        now,
                    );
                    let insert = IndexEvent::Insert {
                        key: key.clone(),
                        content: committed.digest,
                        size: committed.size,
                        url: Some(url_s),
                        at: now,
                    };
                    (checksum, key, insert)
                })
                .map_err(|e| e.into_core_error(&redacted))?;
            let mut events = vec![insert];
            if let Some((url, (resource_name, resource_version))) = record_for
                && me
                    .index
                    .record_checksum(&url, checksum, &resource_name, &resource_version)
            {
                events.push(IndexEvent::Record {
                    url,
                    checksum,
                    resource_name,
                    resource_version,
                });
            }
            // The module is committed: from here on nothing fails the fetch.
            // Journaled after the store's lock of the content is released
            // (never under it), still under the journal's shared lock.
            match &shared {
                Some(shared) => me.append_with_hints(&events, || shared.append(&events, true)),
                None => me.journal_append_all(&events),
            }
            Ok::<_, wasm_cache_core::Error>(Published {
                path: committed.path,
                checksum,
                key,
                content: committed.digest,
                downloaded: true,
            })
        })
        .await
        .map_err(|e| Error::Internal(format!("commit task failed: {e}")))?
        .inspect_err(|e| self.meters.fetch(result_label(e)))?;
        self.meters.fetch_from(FetchResult::Success, fetched.source);
        self.meters.entries(self.index.len());
        info!(url = %url, checksum = %published.checksum, source = fetched.source.as_str(), "fetched wasm module");
        if self
            .opts
            .max_bytes
            .is_some_and(|b| self.index.total_bytes() > b)
        {
            self.queue_budget_purge();
        }
        Ok(published)
    }

    /// Indexes an orphaned module file already in the store under `want`
    /// (checked by a full re-hash first); `None` if there is none, it is
    /// referenced by another entry, or it does not verify.
    pub(super) async fn adopt(
        self: &Arc<Self>,
        url: &ModuleUrl,
        name: &str,
        want: Sha256Digest,
        req: &GetRequest,
    ) -> Option<Published> {
        // Only a file no entry references: a module already cached under
        // another name is downloaded again for this one, as the reference does.
        if !self.store.contains(&want) || self.index.content_in_use(&want) {
            return None;
        }
        let me = Arc::clone(self);
        let (name, url_s) = (name.to_owned(), url.as_str().to_owned());
        // Indexed under the store's lock of the content, right after the
        // re-hash: a purge deciding about the same orphan waits, then sees it
        // in use.
        let adopted = tokio::task::spawn_blocking(move || {
            me.store.verify_then(&want, |ok| {
                if !ok || me.index.content_in_use(&want) {
                    return None;
                }
                let size = me.store.get(&want)?.size;
                let key = ModuleKey::new(name, want);
                let now = me.now();
                me.index.insert(key.clone(), want, size, Some(&url_s), now);
                let insert = IndexEvent::Insert {
                    key: key.clone(),
                    content: want,
                    size,
                    url: Some(url_s),
                    at: now,
                };
                Some((key, insert))
            })
        })
        .await
        .ok()?;
        let (key, insert) = adopted.ok()?.1?;
        // Journaled once the store's lock of the content is released.
        self.journal_append(&insert);
        if url.records_checksum() {
            self.record(url, want, req);
        }
        info!(url = %url.redacted(), checksum = %want, "adopted a module file already in the store");
        Some(Published {
            path: self.store.path_of(&want),
            checksum: want,
            key,
            content: want,
            downloaded: false,
        })
    }
}
