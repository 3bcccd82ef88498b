//! Hints beside the modules that let one lookup be answered without reading
//! the journal ([`Cache::hit_in_dir`](crate::Cache::hit_in_dir), what the
//! `wasm-cache fetch` command tries first):
//!
//! - `.keys/<sha256 of the module name>-<checksum>`: the content digest of
//!   that entry (written after its `Insert` record, removed after its
//!   `Remove` record);
//! - `.urls/<sha256 of the URL>`: the URL's checksum record as JSON (written
//!   after each `Record`).
//!
//! Names are hashes, so no URL (nor the credentials one may carry) is a file
//! name. The journal stays the only source of truth: hints are written after
//! it, best effort and without `fsync`; a missing one costs the full path,
//! and what a key hint names is a module file checked against its digest
//! before it is served. Every full open makes the hint directories agree with
//! the index again when their counts differ (after a crash, an older binary
//! or a full disk); a directory unchanged since its count was last taken is
//! not listed again ([`HintDir::count_known`]), so a read-only command on a
//! large cache does not wait for two listings of 100,000 names at its exit.
//! Removing an entry also drops the checksum records of its URLs (the
//! journal's `remove` record does not name them): the remover deletes those
//! URLs' hints ([`Hints::forget_urls`]) before it journals the removal.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tracing::debug;
use wasm_cache_core::{
    ChecksumRecord, Index, IndexEvent, ModuleKey, ModuleUrl, Scheme, Sha256Digest, Timestamp,
};
use wasm_store_fs::{HintDir, Journal};

use super::JOURNAL_FILE;
use super::flight::sha256_hex;
use crate::outcome::Outcome;
use crate::{Error, GetRequest};

const KEYS: &str = ".keys";
const URLS: &str = ".urls";

/// How long a quick hit waits for the journal's shared lock to append its
/// last-use record: best effort, like every last-use record.
const QUICK_WAIT: Duration = Duration::from_millis(500);

fn key_hint(key: &ModuleKey) -> String {
    format!(
        "{}-{}",
        sha256_hex(key.name.as_bytes()),
        key.checksum.to_hex()
    )
}

/// What a key hint holds: the entry's content digest.
fn key_hint_body(content: &Sha256Digest) -> Vec<u8> {
    format!("{}\n", content.to_hex()).into_bytes()
}

fn url_hint(url: &str) -> String {
    sha256_hex(url.as_bytes())
}

/// What a URL hint holds: the checksum record as JSON.
fn url_hint_body(rec: &ChecksumRecord) -> Option<Vec<u8>> {
    serde_json::to_vec(rec).ok()
}

/// The two hint directories of a cache directory.
pub(super) struct Hints {
    keys: HintDir,
    urls: HintDir,
}

impl Hints {
    /// Opens (creating) the hint directories; `None` (and a debug line) if
    /// that fails: the cache works without them.
    pub(super) fn open(dir: &Path) -> Option<Self> {
        let opened = HintDir::open(dir, KEYS)
            .and_then(|keys| HintDir::open(dir, URLS).map(|urls| Self { keys, urls }));
        match opened {
            Ok(h) => Some(h),
            Err(e) => {
                debug!(error = %e, "no lookup hints in this cache directory");
                None
            }
        }
    }

    /// Removes the URL hints of the checksum records `events` change, before
    /// they are appended: a process that stops between the append and
    /// [`Hints::after`] leaves no hint for the URL (the full path then
    /// answers), never one naming the checksum the URL had before. Best
    /// effort.
    pub(super) fn before(&self, events: &[IndexEvent]) {
        for event in events {
            if let IndexEvent::Record { url, .. } = event
                && let Err(e) = self.urls.remove(&url_hint(url))
            {
                debug!(error = %e, "removing a lookup hint failed");
            }
        }
    }

    /// Removes the URL hints of `urls` that `index` no longer has a checksum
    /// record for: an entry just removed took its URLs' records with it
    /// (`Index::remove`), and the journal's `remove` record does not name
    /// them. Without this, a quick unpinned hit would answer such a URL once
    /// an entry under the same key is cached again (for OCI: another tag with
    /// the same manifest digest), where the full path pulls again. Best
    /// effort; a hint removed too many only costs a full open.
    pub(super) fn forget_urls<'a>(
        &self,
        index: &Index,
        urls: impl IntoIterator<Item = &'a String>,
    ) {
        for url in urls {
            if index.checksum_record(url).is_none()
                && let Err(e) = self.urls.remove(&url_hint(url))
            {
                debug!(error = %e, "removing a lookup hint failed");
            }
        }
    }

    /// Brings the hints up to date with journal records just appended (and
    /// applied to `index`). Best effort.
    pub(super) fn after(&self, index: &Index, events: &[IndexEvent]) {
        for event in events {
            let done = match event {
                IndexEvent::Insert { key, content, .. } => {
                    self.keys.put(&key_hint(key), &key_hint_body(content))
                }
                IndexEvent::Remove { key } => self.keys.remove(&key_hint(key)),
                IndexEvent::Record { url, .. } => {
                    self.put_url(url, index.checksum_record(url).as_ref())
                }
                _ => Ok(()),
            };
            if let Err(e) = done {
                debug!(error = %e, "updating a lookup hint failed");
            }
        }
    }

    fn put_url(
        &self,
        url: &str,
        rec: Option<&ChecksumRecord>,
    ) -> Result<(), wasm_store_fs::StoreError> {
        let name = url_hint(url);
        match rec.and_then(url_hint_body) {
            // A hint that could not be rewritten (a full disk) must not keep
            // saying what the record said before: removing needs no space.
            Some(json) => self.urls.put(&name, &json).inspect_err(|_| {
                let _ = self.urls.remove(&name);
            }),
            None => self.urls.remove(&name),
        }
    }

    /// Makes the hints agree with `index` (after recovery) when their
    /// numbers differ from the index's entries and records. Best effort.
    pub(super) fn reconcile(&self, index: &Index) {
        let started = Instant::now();
        resync(&self.keys, index.len(), || {
            index
                .entries()
                .into_iter()
                .map(|e| (key_hint(&e.key), Some(key_hint_body(&e.content))))
                .collect()
        });
        resync(&self.urls, index.record_count(), || {
            index
                .checksum_records()
                .into_iter()
                .map(|(url, rec)| (url_hint(&url), url_hint_body(&rec)))
                .collect()
        });
        debug!(took = ?started.elapsed(), "lookup hints reconciled");
    }
}

/// Makes one hint directory hold exactly the hints `want` lists (by name,
/// with their bodies), when its count differs from `live`: removes the
/// others, writes the missing ones. A full disk stops the writing; the next
/// open tries again.
fn resync(dir: &HintDir, live: usize, want: impl FnOnce() -> HashMap<String, Option<Vec<u8>>>) {
    // Usually answered by the count remembered beside the directory, with
    // no listing: an open of a large cache (a `list`) pays two `fstat`s.
    let have = match dir.count_known() {
        Ok(n) if n == live => return,
        Ok(_) => dir.names(),
        Err(e) => Err(e),
    };
    let have: HashSet<String> = match have {
        Ok(names) => names.into_iter().collect(),
        Err(e) => {
            debug!(error = %e, dir = %dir.path().display(), "listing lookup hints failed");
            return;
        }
    };
    let want = want();
    for name in have.iter().filter(|n| !want.contains_key(*n)) {
        let _ = dir.remove(name);
    }
    for (name, body) in &want {
        if let Some(body) = body.as_ref().filter(|_| !have.contains(name))
            && dir.put(name, body).is_err()
        {
            break;
        }
    }
}

/// [`Cache::hit_in_dir`](crate::Cache::hit_in_dir).
pub(crate) fn hit_in_dir(
    dir: &Path,
    req: &GetRequest,
    now: Timestamp,
) -> Result<Option<Outcome>, Error> {
    // Only what needs no index and no fetcher: no trust policy on the
    // request, and a checksum that is pinned (by the request or a digest in
    // the URL) or that the URL's checksum record gives as the full path's
    // lookup would (`Index::lookup`: the record's resource version matches,
    // or the pull policy ignores it).
    if req.trust.is_some() {
        return Ok(None);
    }
    let Ok(url) = ModuleUrl::parse(&req.url) else {
        return Ok(None); // The full path reports the error.
    };
    let pinned = match req.given_checksum().map(Sha256Digest::parse) {
        Some(Ok(c)) => Some(c),
        Some(Err(_)) => return Ok(None),
        None => url.pinned_digest(),
    };
    if pinned.is_none() && !url.records_checksum() {
        return Ok(None); // A digest of another algorithm: always fetched.
    }
    let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    // Nothing is created here: a directory without hints is a miss.
    if !dir.join(KEYS).is_dir() || !dir.join(URLS).is_dir() {
        return Ok(None);
    }
    let Some(hints) = Hints::open(&dir) else {
        return Ok(None);
    };
    let rec: Option<ChecksumRecord> = if url.records_checksum() {
        hints
            .urls
            .get(&url_hint(url.as_str()))
            .and_then(|b| serde_json::from_slice(&b).ok())
    } else {
        None
    };
    let same_version = |r: &ChecksumRecord| {
        r.resource_versions.get(&req.resource_name) == Some(&req.resource_version)
    };
    let checksum = match (pinned, &rec) {
        (Some(c), _) => c,
        // The full path's rule (`Index::lookup`), from the same record.
        (None, Some(r)) if req.pull_policy.takes_record(&url, same_version(r)) => r.checksum,
        // No record, or one the policy says to re-pull for.
        (None, _) => return Ok(None),
    };
    let key = ModuleKey::new(url.module_name(), checksum);
    let Some(content) = hints
        .keys
        .get(&key_hint(&key))
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| Sha256Digest::parse(s.trim()).ok())
    else {
        return Ok(None);
    };
    // Only OCI keys name a manifest digest; any other key's checksum is its
    // content's, so a hint saying otherwise is not believed.
    if content != checksum && url.scheme() != Scheme::Oci {
        return Ok(None);
    }
    // The file must be there and hash to its name (its verification mark,
    // or reading it); anything else is for the full path to sort out.
    let Some(size) = wasm_store_fs::check_module(&dir, &content)? else {
        return Ok(None);
    };
    let mut events = Vec::with_capacity(2);
    let mut new_record = None;
    // A pinned hit records its checksum and resource version for the URL as
    // the full path does (`Index::record_hit`); an unpinned one took them
    // from the record and, like the full path, journals no change.
    if pinned.is_some() && url.records_checksum() {
        let same = rec
            .as_ref()
            .is_some_and(|r| r.checksum == checksum && same_version(r));
        if !same {
            let mut r = rec.unwrap_or_default();
            r.checksum = checksum;
            r.resource_versions
                .insert(req.resource_name.clone(), req.resource_version.clone());
            new_record = Some(r);
            events.push(IndexEvent::Record {
                url: url.as_str().to_owned(),
                checksum,
                resource_name: req.resource_name.clone(),
                resource_version: req.resource_version.clone(),
            });
        }
    }
    events.push(IndexEvent::Touch {
        key: key.clone(),
        at: now,
    });
    // Best effort, like every last-use record: the module is served anyway.
    hints.before(&events);
    let appended = Journal::<IndexEvent>::open(dir.join(JOURNAL_FILE)).and_then(|j| {
        j.lock_shared(Instant::now() + QUICK_WAIT)
            .and_then(|shared| shared.append(&events, new_record.is_some()))
    });
    match appended {
        Ok(()) => {
            if let Some(r) = new_record
                && let Err(e) = hints.put_url(url.as_str(), Some(&r))
            {
                debug!(error = %e, "updating a lookup hint failed");
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not record the use of a wasm module in the journal");
        }
    }
    let path: PathBuf = dir.join(content.file_name());
    Ok(Some(Outcome {
        path,
        sha256: content,
        size,
        manifest_digest: (checksum != content).then_some(checksum),
        cached: true,
    }))
}
