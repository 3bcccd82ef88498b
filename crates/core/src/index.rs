//! The module index: module entries keyed by (name, checksum), the per-URL
//! checksum records, the lookup rules of REFERENCE §3, expiry and LRU selection.
//!
//! The index is safe to share between threads (`&self` everywhere, sharded maps
//! underneath), so a cache hit never waits on a global lock. Time is always a
//! parameter ([`Timestamp`]); the index never reads a clock.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use serde::{Deserialize, Serialize};

use crate::{ModuleUrl, PullPolicy, Sha256Digest};

/// A point in time: milliseconds since the Unix epoch.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// Converts a wall-clock time (times before the epoch become 0).
    pub fn from_system_time(t: SystemTime) -> Self {
        let ms = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis();
        Self(u64::try_from(ms).unwrap_or(u64::MAX))
    }

    /// The wall-clock time this timestamp stands for.
    pub fn to_system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.0)
    }

    /// Time elapsed from `earlier` to `self` (zero if `earlier` is later).
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

/// The identity of a cached module: its name ([`ModuleUrl::module_name`]) and checksum.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ModuleKey {
    /// The module name.
    pub name: String,
    /// The checksum (module hash for http(s), manifest digest for OCI).
    pub checksum: Sha256Digest,
}

impl ModuleKey {
    /// A key from its parts.
    pub fn new(name: impl Into<String>, checksum: Sha256Digest) -> Self {
        Self {
            name: name.into(),
            checksum,
        }
    }
}

/// A snapshot of one module entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryInfo {
    /// The entry's key.
    pub key: ModuleKey,
    /// The sha256 of the module's bytes, which names its file in the store.
    /// Equal to the key's checksum for http(s); for OCI the key holds the
    /// manifest digest instead.
    pub content: Sha256Digest,
    /// The module's size in bytes.
    pub size: u64,
    /// When the entry was last handed out or stored.
    pub last_use: Timestamp,
    /// The URLs that led to this entry.
    pub urls: BTreeSet<String>,
}

/// What the cache remembers about a URL without a pinned checksum.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ChecksumRecord {
    /// The checksum most recently pulled for the URL.
    pub checksum: Sha256Digest,
    /// Resource name -> the resource version that last saw this checksum.
    pub resource_versions: BTreeMap<String, String>,
}

impl Default for Sha256Digest {
    fn default() -> Self {
        Self::from_bytes([0; 32])
    }
}

#[derive(Debug, Clone)]
struct Entry {
    content: Sha256Digest,
    size: u64,
    last_use: Timestamp,
    urls: BTreeSet<String>,
}

/// One request, as the lookup rules see it.
#[derive(Debug, Clone, Copy)]
pub struct LookupRequest<'a> {
    /// The module URL.
    pub url: &'a ModuleUrl,
    /// The checksum the caller pinned, if any.
    pub checksum: Option<Sha256Digest>,
    /// The name of the resource asking (e.g. a WasmPlugin).
    pub resource_name: &'a str,
    /// Its version.
    pub resource_version: &'a str,
    /// The pull policy.
    pub policy: PullPolicy,
}

/// The outcome of [`Index::lookup`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The module is cached under `key`; the entry was touched.
    Hit {
        /// The entry's key.
        key: ModuleKey,
        /// The sha256 of the module's bytes (its file name in the store).
        content: Sha256Digest,
    },
    /// The module must be fetched.
    Miss {
        /// The module name the fetched module will be stored under.
        name: String,
        /// The checksum the fetched module must have: the caller's, or the
        /// digest in the URL. A checksum remembered for the URL is never a pin
        /// (the upstream may have moved on since).
        expected: Option<Sha256Digest>,
    },
}

/// A change to the index, as persisted in a journal and replayed on restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
#[non_exhaustive]
pub enum IndexEvent {
    /// A module was stored (or stored again) under `key`, reached via `url`.
    Insert {
        /// The entry's key.
        key: ModuleKey,
        /// The sha256 of the module's bytes.
        content: Sha256Digest,
        /// Its size.
        size: u64,
        /// The URL that led to it, if any.
        url: Option<String>,
        /// When.
        at: Timestamp,
    },
    /// An entry was handed out.
    Touch {
        /// The entry's key.
        key: ModuleKey,
        /// When.
        at: Timestamp,
    },
    /// An entry was removed (with the checksum records that pointed at it).
    Remove {
        /// The entry's key.
        key: ModuleKey,
    },
    /// A checksum was recorded for a URL by a resource at a version.
    Record {
        /// The URL as given.
        url: String,
        /// The checksum pulled for it.
        checksum: Sha256Digest,
        /// The resource name.
        resource_name: String,
        /// The resource version.
        resource_version: String,
    },
}

/// The module index. See the [module docs](self).
#[derive(Debug, Default)]
pub struct Index {
    modules: DashMap<ModuleKey, Entry>,
    checksums: DashMap<String, ChecksumRecord>,
}

impl Index {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of module entries.
    pub fn len(&self) -> usize {
        self.modules.len()
    }

    /// Whether there are no module entries.
    pub fn is_empty(&self) -> bool {
        self.modules.is_empty()
    }

    /// Total size of all entries, counting content shared by several entries
    /// once (the store keeps one file per content digest).
    pub fn total_bytes(&self) -> u64 {
        let mut seen = BTreeMap::new();
        for e in &self.modules {
            seen.insert(e.value().content, e.value().size);
        }
        // Saturating: sizes come from a journal and a wrapped sum would make
        // a cache over its budget look empty.
        seen.values().fold(0u64, |a, s| a.saturating_add(*s))
    }

    /// The REFERENCE §3 rules, steps 1 to 4: find the checksum for the request
    /// (given, pinned in the URL, or remembered for the URL when the pull policy
    /// allows it) and, if a module is cached under it, touch it and hit.
    ///
    /// When the remembered checksum is used, the resource version stored for
    /// the request's resource becomes the request's (the seed's behaviour).
    pub fn lookup(&self, req: &LookupRequest<'_>, now: Timestamp) -> Lookup {
        let name = req.url.module_name();
        let pinned = req.checksum.or_else(|| req.url.pinned_digest());
        let checksum = match pinned {
            Some(c) => Some(c),
            // A digest of another algorithm: no cache, fetch.
            None if req.url.has_digest() => None,
            None => self.remembered_checksum(req),
        };
        if let Some(c) = checksum {
            let key = ModuleKey::new(name, c);
            if let Some(content) = self.touch(&key, now) {
                return Lookup::Hit { key, content };
            }
            return Lookup::Miss {
                name: key.name,
                expected: pinned,
            };
        }
        Lookup::Miss {
            name,
            expected: None,
        }
    }

    fn remembered_checksum(&self, req: &LookupRequest<'_>) -> Option<Sha256Digest> {
        let ignore = req.policy.ignores_resource_version(req.url);
        let mut rec = self.checksums.get_mut(req.url.as_str())?;
        let same = rec
            .resource_versions
            .get(req.resource_name)
            .map(String::as_str)
            == Some(req.resource_version);
        if !(ignore || same) {
            return None;
        }
        if !same {
            rec.resource_versions.insert(
                req.resource_name.to_owned(),
                req.resource_version.to_owned(),
            );
        }
        Some(rec.checksum)
    }

    /// Marks `key` as used at `now` and returns its content digest; `None` if
    /// there is no such entry.
    pub fn touch(&self, key: &ModuleKey, now: Timestamp) -> Option<Sha256Digest> {
        let mut e = self.modules.get_mut(key)?;
        e.last_use = e.last_use.max(now);
        Some(e.content)
    }

    /// Whether `key` has an entry (without touching it).
    pub fn contains(&self, key: &ModuleKey) -> bool {
        self.modules.contains_key(key)
    }

    /// A snapshot of the entry under `key`.
    pub fn get(&self, key: &ModuleKey) -> Option<EntryInfo> {
        self.modules.get(key).map(|e| info(key, e.value()))
    }

    /// Whether any entry's module has this content digest (then its file is
    /// still needed).
    pub fn content_in_use(&self, content: &Sha256Digest) -> bool {
        self.modules.iter().any(|e| e.value().content == *content)
    }

    /// Adds or refreshes an entry: sets its content and size, touches it, and
    /// adds `url` to its referencing URLs. Returns true when the entry is new.
    pub fn insert(
        &self,
        key: ModuleKey,
        content: Sha256Digest,
        size: u64,
        url: Option<&str>,
        now: Timestamp,
    ) -> bool {
        let mut new = false;
        let mut e = self.modules.entry(key).or_insert_with(|| {
            new = true;
            Entry {
                content,
                size,
                last_use: now,
                urls: BTreeSet::new(),
            }
        });
        e.content = content;
        e.size = size;
        e.last_use = e.last_use.max(now);
        if let Some(u) = url {
            e.urls.insert(u.to_owned());
        }
        new
    }

    /// Remembers that `url` resolved to `checksum` for `resource_name` at
    /// `resource_version` (step 7). Versions recorded for other resources stay
    /// (the seed's behaviour).
    pub fn record_checksum(
        &self,
        url: &str,
        checksum: Sha256Digest,
        resource_name: &str,
        resource_version: &str,
    ) {
        let mut rec = self.checksums.entry(url.to_owned()).or_default();
        rec.checksum = checksum;
        rec.resource_versions
            .insert(resource_name.to_owned(), resource_version.to_owned());
    }

    /// The record kept for `url`.
    pub fn checksum_record(&self, url: &str) -> Option<ChecksumRecord> {
        self.checksums.get(url).map(|r| r.value().clone())
    }

    /// Number of per-URL checksum records.
    pub fn record_count(&self) -> usize {
        self.checksums.len()
    }

    /// Removes the entry under `key` and every checksum record of its
    /// referencing URLs that still points at its checksum.
    pub fn remove(&self, key: &ModuleKey) -> Option<EntryInfo> {
        let (key, e) = self.modules.remove(key)?;
        for u in &e.urls {
            self.checksums
                .remove_if(u, |_, r| r.checksum == key.checksum);
        }
        Some(info(&key, &e))
    }

    /// Removes the entry only if it is still idle for longer than `idle` at
    /// `now` (re-checked atomically, so a concurrent hit saves it).
    pub fn remove_if_idle(
        &self,
        key: &ModuleKey,
        now: Timestamp,
        idle: Duration,
    ) -> Option<EntryInfo> {
        let (key, e) = self
            .modules
            .remove_if(key, |_, e| now.since(e.last_use) > idle)?;
        for u in &e.urls {
            self.checksums
                .remove_if(u, |_, r| r.checksum == key.checksum);
        }
        Some(info(&key, &e))
    }

    /// The keys of entries unused for longer than `expiry` at `now` (REFERENCE
    /// §5). The caller removes them with [`Index::remove_if_idle`].
    pub fn expired(&self, now: Timestamp, expiry: Duration) -> Vec<ModuleKey> {
        let mut out: Vec<ModuleKey> = self
            .modules
            .iter()
            .filter(|e| now.since(e.value().last_use) > expiry)
            .map(|e| e.key().clone())
            .collect();
        out.sort();
        out
    }

    /// The least recently used entries to remove so that the total size
    /// ([`Index::total_bytes`]) fits in `budget`, never picking an entry used
    /// within `grace` of `now`. Oldest first. If only grace-protected entries
    /// remain, the total may stay above the budget.
    pub fn select_lru(&self, now: Timestamp, budget: u64, grace: Duration) -> Vec<ModuleKey> {
        let mut entries: Vec<(Timestamp, ModuleKey, Sha256Digest, u64)> = self
            .modules
            .iter()
            .map(|e| {
                (
                    e.value().last_use,
                    e.key().clone(),
                    e.value().content,
                    e.value().size,
                )
            })
            .collect();
        entries.sort();
        // Bytes per content digest and how many entries share it: a file is
        // freed only when its last entry goes.
        let mut sharing: BTreeMap<Sha256Digest, (u64, usize)> = BTreeMap::new();
        for (_, _, content, size) in &entries {
            let s = sharing.entry(*content).or_insert((*size, 0));
            s.1 += 1;
        }
        let mut total: u64 = sharing
            .values()
            .fold(0u64, |a, (s, _)| a.saturating_add(*s));
        let mut out = Vec::new();
        for (last, key, content, _) in entries {
            if total <= budget {
                break;
            }
            if now.since(last) < grace {
                continue;
            }
            if let Some(s) = sharing.get_mut(&content) {
                s.1 -= 1;
                if s.1 == 0 {
                    total = total.saturating_sub(s.0);
                }
            }
            out.push(key);
        }
        out
    }

    /// Snapshots of every entry, sorted by key.
    pub fn entries(&self) -> Vec<EntryInfo> {
        let mut out: Vec<EntryInfo> = self
            .modules
            .iter()
            .map(|e| info(e.key(), e.value()))
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
    }

    /// Brings last-use times later than `now` back to `now` and returns how
    /// many were. A journal written by a machine whose clock ran ahead (or
    /// by hand) could otherwise keep an entry from ever expiring or being
    /// evicted. Call after replaying a journal; `now` is the caller's clock.
    pub fn clamp_future(&self, now: Timestamp) -> usize {
        self.clamp_future_to(now, &|_| None)
    }

    /// [`clamp_future`](Self::clamp_future), bringing a future last use back
    /// to `fallback(content)` instead (e.g. when the module's file was
    /// written) when that is known and not itself after `now`.
    pub fn clamp_future_to(
        &self,
        now: Timestamp,
        fallback: &dyn Fn(&Sha256Digest) -> Option<Timestamp>,
    ) -> usize {
        let mut n = 0;
        for mut e in self.modules.iter_mut() {
            if e.last_use > now {
                e.last_use = fallback(&e.content).map_or(now, |t| t.min(now));
                n += 1;
            }
        }
        n
    }

    /// Sets the size of every entry whose content is `content` to `size` (the
    /// size of its file, which the caller read from the disk) and returns how
    /// many entries said otherwise.
    pub fn correct_size(&self, content: &Sha256Digest, size: u64) -> usize {
        let mut n = 0;
        for mut e in self.modules.iter_mut() {
            if e.content == *content && e.size != size {
                e.size = size;
                n += 1;
            }
        }
        n
    }

    /// Removes every entry and checksum record (before replaying a journal
    /// that replaced the one the index was built from).
    pub fn clear(&self) {
        self.modules.clear();
        self.checksums.clear();
    }

    /// Number of journal records [`to_events`](Self::to_events) would write:
    /// the live records a compaction keeps.
    pub fn event_count(&self) -> usize {
        let entries: usize = self.modules.iter().map(|e| 1 + e.value().urls.len()).sum();
        let records: usize = self
            .checksums
            .iter()
            .map(|r| r.value().resource_versions.len())
            .sum();
        entries + records
    }

    /// Applies a persisted change.
    pub fn apply(&self, event: &IndexEvent) {
        match event {
            IndexEvent::Insert {
                key,
                content,
                size,
                url,
                at,
            } => {
                self.insert(key.clone(), *content, *size, url.as_deref(), *at);
            }
            IndexEvent::Touch { key, at } => {
                self.touch(key, *at);
            }
            IndexEvent::Remove { key } => {
                self.remove(key);
            }
            IndexEvent::Record {
                url,
                checksum,
                resource_name,
                resource_version,
            } => self.record_checksum(url, *checksum, resource_name, resource_version),
        }
    }

    /// The whole index as events; replaying them into an empty index gives an
    /// equal index (used to compact a journal).
    pub fn to_events(&self) -> Vec<IndexEvent> {
        let mut out = Vec::new();
        for e in self.entries() {
            out.push(IndexEvent::Insert {
                key: e.key.clone(),
                content: e.content,
                size: e.size,
                url: None,
                at: e.last_use,
            });
            for u in e.urls {
                out.push(IndexEvent::Insert {
                    key: e.key.clone(),
                    content: e.content,
                    size: e.size,
                    url: Some(u),
                    at: e.last_use,
                });
            }
        }
        let mut records: Vec<(String, ChecksumRecord)> = self
            .checksums
            .iter()
            .map(|r| (r.key().clone(), r.value().clone()))
            .collect();
        records.sort_by(|a, b| a.0.cmp(&b.0));
        for (url, rec) in records {
            for (name, version) in rec.resource_versions {
                out.push(IndexEvent::Record {
                    url: url.clone(),
                    checksum: rec.checksum,
                    resource_name: name,
                    resource_version: version,
                });
            }
        }
        out
    }
}

fn info(key: &ModuleKey, e: &Entry) -> EntryInfo {
    EntryInfo {
        key: key.clone(),
        content: e.content,
        size: e.size,
        last_use: e.last_use,
        urls: e.urls.clone(),
    }
}

#[cfg(test)]
mod tests;
