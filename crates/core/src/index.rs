//! The module index: module entries keyed by (name, checksum), the per-URL
//! checksum records, the lookup rules of REFERENCE §3, expiry and LRU selection.
//!
//! The index is safe to share between threads (`&self` everywhere, sharded maps
//! underneath), so a cache hit never waits on a global lock. Time is always a
//! parameter ([`Timestamp`]); the index never reads a clock.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use serde::{Deserialize, Serialize};

use crate::{ModuleUrl, PullPolicy, Sha256Digest};

/// A point in time: milliseconds since the Unix epoch.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[non_exhaustive]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// The timestamp `ms` milliseconds after the Unix epoch.
    pub const fn from_millis(ms: u64) -> Self {
        Self(ms)
    }

    /// Milliseconds since the Unix epoch.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

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
///
/// For http(s) the name is the whole URL as given, so it may hold credentials:
/// `Debug` prints it [redacted](crate::redact_url), and logs must use
/// [`ModuleKey::redacted_name`].
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[non_exhaustive]
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

    /// The name without user-info or query string, safe for logs and errors.
    pub fn redacted_name(&self) -> String {
        crate::redact_url(&self.name)
    }
}

impl fmt::Debug for ModuleKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModuleKey")
            .field("name", &self.redacted_name())
            .field("checksum", &self.checksum)
            .finish()
    }
}

/// `Debug` for a set of URLs as given (a set, or a sorted slice of them):
/// each one redacted.
struct RedactedUrls<I>(I);

impl<'a, I: IntoIterator<Item = &'a String> + Copy> fmt::Debug for RedactedUrls<I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries(self.0.into_iter().map(|u| crate::redacted_url(u)))
            .finish()
    }
}

/// One module entry, borrowed from the index through an [`EntryRefs`]:
/// what [`EntryInfo`] holds, without copying the key or the URLs. `Debug`
/// redacts the URLs.
#[derive(Clone, Copy)]
#[non_exhaustive]
pub struct EntryRef<'a> {
    /// The entry's key.
    pub key: &'a ModuleKey,
    /// The sha256 of the module's bytes (see [`EntryInfo::content`]).
    pub content: Sha256Digest,
    /// The module's size in bytes.
    pub size: u64,
    /// When the entry was last handed out or stored.
    pub last_use: Timestamp,
    /// The URLs that led to this entry, sorted, without duplicates.
    pub urls: &'a [String],
}

impl fmt::Debug for EntryRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EntryRef")
            .field("key", self.key)
            .field("content", &self.content)
            .field("size", &self.size)
            .field("last_use", &self.last_use)
            .field("urls", &RedactedUrls(self.urls))
            .finish()
    }
}

/// Every module entry of an index, borrowed in place ([`Index::entry_refs`]):
/// a vector of references, so that parts of it can be read on several
/// threads at once (`EntryRefs` is `Sync`). The index is read-locked, shard by
/// shard, until this is dropped: the holder must not write to the index
/// meanwhile.
pub struct EntryRefs<'a>(Vec<dashmap::mapref::multiple::RefMulti<'a, ModuleKey, Entry>>);

impl<'a> EntryRefs<'a> {
    /// How many entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Every entry, in no particular order but that of [`range`](Self::range).
    pub fn iter(&self) -> impl ExactSizeIterator<Item = EntryRef<'_>> + '_ {
        self.range(0..self.0.len())
    }

    /// The entries at `range` (indices into this set, in no particular
    /// order but the same on every call).
    ///
    /// # Panics
    /// If `range` is out of bounds.
    pub fn range(
        &self,
        range: std::ops::Range<usize>,
    ) -> impl ExactSizeIterator<Item = EntryRef<'_>> + '_ {
        self.0[range].iter().map(|r| entry_ref(r.key(), r.value()))
    }
}

impl fmt::Debug for EntryRefs<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EntryRefs")
            .field("len", &self.0.len())
            .finish()
    }
}

fn entry_ref<'a>(key: &'a ModuleKey, v: &'a Entry) -> EntryRef<'a> {
    EntryRef {
        key,
        content: v.content,
        size: v.size,
        last_use: v.last_use,
        urls: &v.urls.0,
    }
}

/// A snapshot of one module entry. `Debug` redacts the URLs.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
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

impl fmt::Debug for EntryInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EntryInfo")
            .field("key", &self.key)
            .field("content", &self.content)
            .field("size", &self.size)
            .field("last_use", &self.last_use)
            .field("urls", &RedactedUrls(&self.urls))
            .finish()
    }
}

/// What the cache remembers about a URL without a pinned checksum.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[non_exhaustive]
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

#[derive(Clone)]
struct Entry {
    content: Sha256Digest,
    size: u64,
    last_use: Timestamp,
    urls: Urls,
}

/// The hasher of the index's maps: foldhash, seeded per process (SipHash
/// was a tenth of a large journal's replay). Keys come from callers and the
/// journal, so the seed stays random.
type Hasher = foldhash::fast::RandomState;

/// An entry's URLs, sorted, without duplicates: a vector rather than a
/// `BTreeSet` (whose first insert allocates a whole B-tree node), as an
/// entry almost always has one URL.
#[derive(Clone, Default)]
struct Urls(Vec<String>);

impl Urls {
    fn insert(&mut self, url: String) {
        if let Err(at) = self.0.binary_search(&url) {
            self.0.insert(at, url);
        }
    }

    fn iter(&self) -> std::slice::Iter<'_, String> {
        self.0.iter()
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn to_set(&self) -> BTreeSet<String> {
        self.0.iter().cloned().collect()
    }
}

/// A [`ChecksumRecord`] as the index keeps it: the resource versions in a
/// vector sorted by resource name (usually one), not a `BTreeMap`.
#[derive(Clone, Default)]
struct Rec {
    checksum: Sha256Digest,
    versions: Vec<(String, String)>,
}

impl Rec {
    fn find(&self, resource: &str) -> Result<usize, usize> {
        self.versions
            .binary_search_by(|(name, _)| name.as_str().cmp(resource))
    }

    fn version(&self, resource: &str) -> Option<&str> {
        self.find(resource)
            .ok()
            .map(|i| self.versions[i].1.as_str())
    }

    /// Sets the version of `resource`; returns whether it changed.
    fn set(&mut self, resource: &str, version: &str) -> bool {
        match self.find(resource) {
            Ok(i) if self.versions[i].1 == version => false,
            Ok(i) => {
                version.clone_into(&mut self.versions[i].1);
                true
            }
            Err(i) => {
                self.versions
                    .insert(i, (resource.to_owned(), version.to_owned()));
                true
            }
        }
    }

    /// [`set`](Self::set) with owned strings (a journal replay moves them in).
    fn set_owned(&mut self, resource: String, version: String) {
        match self.find(&resource) {
            Ok(i) => self.versions[i].1 = version,
            Err(i) => self.versions.insert(i, (resource, version)),
        }
    }

    fn to_public(&self) -> ChecksumRecord {
        ChecksumRecord {
            checksum: self.checksum,
            resource_versions: self.versions.iter().cloned().collect(),
        }
    }

    fn from_public(rec: &ChecksumRecord) -> Self {
        Self {
            checksum: rec.checksum,
            // A BTreeMap iterates in key order: already sorted.
            versions: rec
                .resource_versions
                .iter()
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect(),
        }
    }
}

/// One request, as the lookup rules see it; make one with
/// [`LookupRequest::new`].
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
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

/// The outcome of [`Index::lookup`]. `Debug` redacts the module name.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
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

impl<'a> LookupRequest<'a> {
    /// A request for `url`, pinned to `checksum` if given, from resource
    /// `resource_name` at `resource_version`, under `policy`.
    pub fn new(
        url: &'a ModuleUrl,
        checksum: Option<Sha256Digest>,
        resource_name: &'a str,
        resource_version: &'a str,
        policy: PullPolicy,
    ) -> Self {
        Self {
            url,
            checksum,
            resource_name,
            resource_version,
            policy,
        }
    }
}

impl fmt::Debug for Lookup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Hit { key, content } => f
                .debug_struct("Hit")
                .field("key", key)
                .field("content", content)
                .finish(),
            Self::Miss { name, expected } => f
                .debug_struct("Miss")
                .field("name", &crate::redact_url(name))
                .field("expected", expected)
                .finish(),
        }
    }
}

/// An entry taken out of the index by [`Index::remove_if_idle`], with the
/// per-URL checksum records that went with it, so that [`Index::restore`] can
/// put both back when deleting its file fails. `Debug` redacts the URLs.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Removed {
    /// The entry as it was.
    pub entry: EntryInfo,
    /// The checksum records (by URL as given) that pointed at its checksum.
    pub records: Vec<(String, ChecksumRecord)>,
    /// The signature records of its checksum, when no other entry kept them.
    pub signatures: Vec<SignatureRecord>,
}

/// Most signature records kept per checksum (one per key); more are not kept.
pub const MAX_SIGNATURES_PER_CHECKSUM: usize = 8;

/// A record that a key verified a checksum (the manifest digest for OCI, the
/// module's sha256 otherwise), with the evidence it verified on.
///
/// The index does not judge it: a record read back from a journal proves
/// nothing by itself, and the cache checks its evidence again (no network)
/// before trusting it. `Debug` shows the evidence's length only.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SignatureRecord {
    /// The key's fingerprint (sha256 of its SubjectPublicKeyInfo DER).
    pub key: Sha256Digest,
    /// What the key signed, as the signature crate writes it (opaque here).
    pub evidence: String,
}

impl SignatureRecord {
    /// A record from its parts.
    pub fn new(key: Sha256Digest, evidence: impl Into<String>) -> Self {
        Self {
            key,
            evidence: evidence.into(),
        }
    }
}

impl fmt::Debug for SignatureRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignatureRecord")
            .field("key", &self.key)
            .field("evidence_len", &self.evidence.len())
            .finish()
    }
}

impl fmt::Debug for Removed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let records: Vec<(String, &ChecksumRecord)> = self
            .records
            .iter()
            .map(|(u, r)| (crate::redact_url(u), r))
            .collect();
        f.debug_struct("Removed")
            .field("entry", &self.entry)
            .field("records", &records)
            .finish()
    }
}

/// A change to the index, as persisted in a journal and replayed on restart.
/// `Debug` redacts the URLs.
///
/// Serialized as a map tagged by `"op"` (written first). Decoding is
/// hand-written (`EventVisitor`) for the open of a large cache: serde's
/// derived decoding of an internally tagged enum buffers every field before
/// it knows the variant, which was most of the journal replay's time.
#[derive(Clone, PartialEq, Eq, Serialize)]
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
    /// A key verified a checksum; kept while an entry has that checksum.
    Signed {
        /// The checksum verified.
        checksum: Sha256Digest,
        /// The key's fingerprint.
        key: Sha256Digest,
        /// What the key signed (see [`SignatureRecord`]).
        evidence: String,
    },
}

impl<'de> Deserialize<'de> for IndexEvent {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(EventVisitor)
    }
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum Op {
    Insert,
    Touch,
    Remove,
    Record,
    Signed,
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum Field {
    Op,
    Key,
    Content,
    Size,
    Url,
    At,
    Checksum,
    ResourceName,
    ResourceVersion,
    Evidence,
    #[serde(other)]
    Other,
}

/// A `key` read before the `op` said which kind it is.
#[derive(Deserialize)]
#[serde(untagged)]
enum KeyField {
    Module(ModuleKey),
    Digest(Sha256Digest),
}

/// Decodes an [`IndexEvent`] field by field, in one pass when `op` comes
/// first (as this crate writes it); fields in another order decode too.
/// Unknown fields are ignored; an unknown `op` or a missing field is an error
/// naming it.
struct EventVisitor;

impl<'de> serde::de::Visitor<'de> for EventVisitor {
    type Value = IndexEvent;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an index event (a map with an \"op\")")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<IndexEvent, A::Error> {
        use serde::de::Error as _;
        let mut op = None;
        let mut key: Option<KeyField> = None;
        let mut content = None;
        let mut size = None;
        let mut url: Option<Option<String>> = None;
        let mut at = None;
        let mut checksum = None;
        let mut resource_name = None;
        let mut resource_version = None;
        let mut evidence = None;
        while let Some(field) = map.next_key::<Field>()? {
            match field {
                Field::Op => op = Some(map.next_value::<Op>()?),
                Field::Key => {
                    key = Some(match op {
                        Some(Op::Signed) => KeyField::Digest(map.next_value()?),
                        Some(_) => KeyField::Module(map.next_value()?),
                        None => map.next_value::<KeyField>()?,
                    });
                }
                Field::Content => content = Some(map.next_value()?),
                Field::Size => size = Some(map.next_value()?),
                Field::Url => url = Some(map.next_value()?),
                Field::At => at = Some(map.next_value()?),
                Field::Checksum => checksum = Some(map.next_value()?),
                Field::ResourceName => resource_name = Some(map.next_value()?),
                Field::ResourceVersion => resource_version = Some(map.next_value()?),
                Field::Evidence => evidence = Some(map.next_value()?),
                Field::Other => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        let op = op.ok_or_else(|| A::Error::missing_field("op"))?;
        let module_key = |k: Option<KeyField>| match k {
            Some(KeyField::Module(k)) => Ok(k),
            Some(KeyField::Digest(_)) => Err(A::Error::custom(
                "key: expected a module key (name and checksum)",
            )),
            None => Err(A::Error::missing_field("key")),
        };
        fn need<T, E: serde::de::Error>(v: Option<T>, name: &'static str) -> Result<T, E> {
            v.ok_or_else(|| E::missing_field(name))
        }
        Ok(match op {
            Op::Insert => IndexEvent::Insert {
                key: module_key(key)?,
                content: need(content, "content")?,
                size: need(size, "size")?,
                url: url.flatten(),
                at: need(at, "at")?,
            },
            Op::Touch => IndexEvent::Touch {
                key: module_key(key)?,
                at: need(at, "at")?,
            },
            Op::Remove => IndexEvent::Remove {
                key: module_key(key)?,
            },
            Op::Record => IndexEvent::Record {
                url: need(url.flatten(), "url")?,
                checksum: need(checksum, "checksum")?,
                resource_name: need(resource_name, "resource_name")?,
                resource_version: need(resource_version, "resource_version")?,
            },
            Op::Signed => IndexEvent::Signed {
                checksum: need(checksum, "checksum")?,
                key: match key {
                    Some(KeyField::Digest(d)) => d,
                    Some(KeyField::Module(_)) => {
                        return Err(A::Error::custom("key: expected a key fingerprint"));
                    }
                    None => return Err(A::Error::missing_field("key")),
                },
                evidence: need(evidence, "evidence")?,
            },
        })
    }
}

impl fmt::Debug for IndexEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Insert {
                key,
                content,
                size,
                url,
                at,
            } => f
                .debug_struct("Insert")
                .field("key", key)
                .field("content", content)
                .field("size", size)
                .field("url", &url.as_deref().map(crate::redact_url))
                .field("at", at)
                .finish(),
            Self::Touch { key, at } => f
                .debug_struct("Touch")
                .field("key", key)
                .field("at", at)
                .finish(),
            Self::Remove { key } => f.debug_struct("Remove").field("key", key).finish(),
            Self::Record {
                url,
                checksum,
                resource_name,
                resource_version,
            } => f
                .debug_struct("Record")
                .field("url", &crate::redact_url(url))
                .field("checksum", checksum)
                .field("resource_name", resource_name)
                .field("resource_version", resource_version)
                .finish(),
            Self::Signed {
                checksum,
                key,
                evidence,
            } => f
                .debug_struct("Signed")
                .field("checksum", checksum)
                .field("key", key)
                .field("evidence_len", &evidence.len())
                .finish(),
        }
    }
}

/// The module index. See the [module docs](self).
///
/// `Debug` shows counts only (the maps hold URLs as given).
#[derive(Default)]
pub struct Index {
    // foldhash (keyed per map, like SipHash's RandomState, several times
    // faster on URLs): every open applies into these and every hit looks
    // both the modules and the checksum records up.
    modules: DashMap<ModuleKey, Entry, Hasher>,
    checksums: DashMap<String, Rec, Hasher>,
    signatures: DashMap<Sha256Digest, Vec<SignatureRecord>, Hasher>,
    /// Bumped after every change that can alter what a lookup answers (see
    /// [`Index::generation`]); never by a touch.
    generation: AtomicU64,
}

impl fmt::Debug for Index {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Index")
            .field("modules", &self.modules.len())
            .field("checksum_records", &self.checksums.len())
            .finish()
    }
}

impl Index {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty index with room for `modules` entries and as many checksum
    /// records without growing (a replay of a large journal then never
    /// rehashes).
    pub fn with_capacity(modules: usize) -> Self {
        Self {
            modules: DashMap::with_capacity_and_hasher(modules, Hasher::default()),
            checksums: DashMap::with_capacity_and_hasher(modules, Hasher::default()),
            signatures: DashMap::default(),
            generation: AtomicU64::new(0),
        }
    }

    /// A number that changes after every change that can alter what
    /// [`lookup`](Self::lookup) answers for some request: an entry removed or
    /// given another content, a checksum record changed or removed, the index
    /// cleared. A touch (last use) and the insertion of a new entry do not
    /// change it. A caller may remember a lookup's answer together with the
    /// generation read *before* that lookup, and reuse the answer while the
    /// generation is unchanged (the cache's hot records do).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Called after a change that can alter a lookup's answer.
    fn changed(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
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
        seen.values().fold(0u64, |sum, s| sum.saturating_add(*s))
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
        // The common case (every hit of an unpinned URL): nothing to change,
        // so a read lock, which hits of other URLs in the shard share.
        {
            let rec = self.checksums.get(req.url.as_str())?;
            let seen = rec.version(req.resource_name) == Some(req.resource_version);
            if !req.policy.takes_record(req.url, seen) {
                return None;
            }
            if seen {
                return Some(rec.checksum);
            }
        }
        let mut rec = self.checksums.get_mut(req.url.as_str())?;
        let changed = rec.version(req.resource_name) != Some(req.resource_version);
        if changed {
            rec.set(req.resource_name, req.resource_version);
        }
        let checksum = rec.checksum;
        drop(rec);
        if changed {
            self.changed();
        }
        Some(checksum)
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
        self.insert_owned(key, content, size, url.map(str::to_owned), now)
    }

    /// [`insert`](Self::insert) with the URL already owned.
    fn insert_owned(
        &self,
        key: ModuleKey,
        content: Sha256Digest,
        size: u64,
        url: Option<String>,
        now: Timestamp,
    ) -> bool {
        let mut new = false;
        let mut e = self.modules.entry(key).or_insert_with(|| {
            new = true;
            Entry {
                content,
                size,
                last_use: now,
                urls: Urls::default(),
            }
        });
        let other_content = e.content != content;
        e.content = content;
        e.size = size;
        e.last_use = e.last_use.max(now);
        if let Some(u) = url {
            e.urls.insert(u);
        }
        drop(e);
        if other_content {
            self.changed();
        }
        new
    }

    /// Remembers that `url` resolved to `checksum` for `resource_name` at
    /// `resource_version` (step 7). Versions recorded for other resources stay
    /// (the seed's behaviour).
    ///
    /// Returns whether the record changed (a new checksum or a new version for
    /// this resource), i.e. whether a journal needs the event.
    pub fn record_checksum(
        &self,
        url: &str,
        checksum: Sha256Digest,
        resource_name: &str,
        resource_version: &str,
    ) -> bool {
        // The common case on a hit: nothing to change, and no allocation.
        if let Some(rec) = self.checksums.get(url)
            && rec.checksum == checksum
            && rec.version(resource_name) == Some(resource_version)
        {
            return false;
        }
        let mut rec = self.checksums.entry(url.to_owned()).or_default();
        let changed = rec.checksum != checksum;
        rec.checksum = checksum;
        let changed = rec.set(resource_name, resource_version) || changed;
        drop(rec);
        if changed {
            self.changed();
        }
        changed
    }

    /// REFERENCE §3.4: what a hit under `key` records, exactly as step 7 does
    /// after a download (Istio's `touchEntry` calls `updateChecksum`): the
    /// checksum for the URL, unless it is an OCI URL pinned with `@`, and the
    /// asking resource's version. Returns the event to persist when the record
    /// changed, `None` when it already said so (the common case, which writes
    /// nothing).
    pub fn record_hit(&self, req: &LookupRequest<'_>, key: &ModuleKey) -> Option<IndexEvent> {
        if !req.url.records_checksum() {
            return None;
        }
        self.record_checksum(
            req.url.as_str(),
            key.checksum,
            req.resource_name,
            req.resource_version,
        )
        .then(|| IndexEvent::Record {
            url: req.url.as_str().to_owned(),
            checksum: key.checksum,
            resource_name: req.resource_name.to_owned(),
            resource_version: req.resource_version.to_owned(),
        })
    }

    /// The record kept for `url`.
    pub fn checksum_record(&self, url: &str) -> Option<ChecksumRecord> {
        self.checksums.get(url).map(|r| r.value().to_public())
    }

    /// Every per-URL checksum record (URL as given, record), in no order.
    pub fn checksum_records(&self) -> Vec<(String, ChecksumRecord)> {
        self.checksums
            .iter()
            .map(|r| (r.key().clone(), r.value().to_public()))
            .collect()
    }

    /// Number of per-URL checksum records.
    pub fn record_count(&self) -> usize {
        self.checksums.len()
    }

    /// Remembers that `key` verified `checksum` on `evidence`. One record per
    /// key (a new one replaces its evidence), at most
    /// [`MAX_SIGNATURES_PER_CHECKSUM`] per checksum. Returns whether the
    /// records changed, i.e. whether a journal needs the event.
    pub fn record_signature(
        &self,
        checksum: Sha256Digest,
        key: Sha256Digest,
        evidence: &str,
    ) -> bool {
        let mut records = self.signatures.entry(checksum).or_default();
        let full = records.len() >= MAX_SIGNATURES_PER_CHECKSUM;
        match records.iter_mut().find(|r| r.key == key) {
            Some(r) if r.evidence == evidence => false,
            Some(r) => {
                evidence.clone_into(&mut r.evidence);
                true
            }
            None if full => false,
            None => {
                records.push(SignatureRecord::new(key, evidence));
                true
            }
        }
    }

    /// The signature records of `checksum` (unjudged: see [`SignatureRecord`]).
    pub fn signatures(&self, checksum: &Sha256Digest) -> Vec<SignatureRecord> {
        self.signatures
            .get(checksum)
            .map(|r| r.value().clone())
            .unwrap_or_default()
    }

    /// Drops the record of `key` for `checksum` (its evidence did not verify);
    /// the next compaction leaves it out of the journal.
    pub fn forget_signature(&self, checksum: &Sha256Digest, key: &Sha256Digest) {
        if let Some(mut records) = self.signatures.get_mut(checksum) {
            records.retain(|r| r.key != *key);
        }
        self.signatures.remove_if(checksum, |_, r| r.is_empty());
    }

    /// Drops the signature records of `checksum` once no entry has it, and
    /// returns them.
    fn drop_unused_signatures(&self, checksum: &Sha256Digest) -> Vec<SignatureRecord> {
        if !self.signatures.contains_key(checksum)
            || self.modules.iter().any(|e| e.key().checksum == *checksum)
        {
            return Vec::new();
        }
        self.signatures
            .remove(checksum)
            .map(|(_, r)| r)
            .unwrap_or_default()
    }

    /// Removes the entry under `key` and every checksum record of its
    /// referencing URLs that still points at its checksum.
    pub fn remove(&self, key: &ModuleKey) -> Option<EntryInfo> {
        let (key, e) = self.modules.remove(key)?;
        self.drop_unused_signatures(&key.checksum);
        for u in e.urls.iter() {
            self.checksums
                .remove_if(u, |_, r| r.checksum == key.checksum);
        }
        self.changed();
        Some(info(&key, &e))
    }

    /// Removes the entry only if it is still idle for longer than `idle` at
    /// `now` (re-checked atomically, so a concurrent hit saves it).
    ///
    /// "Idle" means unused for strictly longer than `idle`: an entry used
    /// exactly `idle` ago is kept, by this function, [`Index::expired`] and
    /// [`Index::select_lru`] alike.
    pub fn remove_if_idle(
        &self,
        key: &ModuleKey,
        now: Timestamp,
        idle: Duration,
    ) -> Option<Removed> {
        let (key, e) = self
            .modules
            .remove_if(key, |_, e| crate::plan::is_idle(now, e.last_use, idle))?;
        let mut records = Vec::new();
        for u in e.urls.iter() {
            if let Some((u, r)) = self
                .checksums
                .remove_if(u, |_, r| r.checksum == key.checksum)
            {
                records.push((u, r.to_public()));
            }
        }
        self.changed();
        Some(Removed {
            entry: info(&key, &e),
            records,
            signatures: self.drop_unused_signatures(&key.checksum),
        })
    }

    /// Puts back what [`Index::remove_if_idle`] took out (a file removal
    /// failed, REFERENCE §5: "a failed removal keeps the entry"): the entry with
    /// its URLs and last use, and its checksum records unless a newer record
    /// for the URL was made meanwhile. Returns the events a journal needs.
    pub fn restore(&self, removed: &Removed) -> Vec<IndexEvent> {
        let e = &removed.entry;
        let mut events = Vec::new();
        self.insert(e.key.clone(), e.content, e.size, None, e.last_use);
        events.push(IndexEvent::Insert {
            key: e.key.clone(),
            content: e.content,
            size: e.size,
            url: None,
            at: e.last_use,
        });
        for u in &e.urls {
            self.insert(e.key.clone(), e.content, e.size, Some(u), e.last_use);
            events.push(IndexEvent::Insert {
                key: e.key.clone(),
                content: e.content,
                size: e.size,
                url: Some(u.clone()),
                at: e.last_use,
            });
        }
        for sig in &removed.signatures {
            if self.record_signature(e.key.checksum, sig.key, &sig.evidence) {
                events.push(IndexEvent::Signed {
                    checksum: e.key.checksum,
                    key: sig.key,
                    evidence: sig.evidence.clone(),
                });
            }
        }
        for (url, rec) in &removed.records {
            if let dashmap::Entry::Vacant(v) = self.checksums.entry(url.clone()) {
                v.insert(Rec::from_public(rec));
                self.changed();
                for (name, version) in &rec.resource_versions {
                    events.push(IndexEvent::Record {
                        url: url.clone(),
                        checksum: rec.checksum,
                        resource_name: name.clone(),
                        resource_version: version.clone(),
                    });
                }
            }
        }
        events
    }

    /// The keys of entries unused for longer than `expiry` at `now` (REFERENCE
    /// §5). The caller removes them with [`Index::remove_if_idle`].
    pub fn expired(&self, now: Timestamp, expiry: Duration) -> Vec<ModuleKey> {
        crate::plan::plan_purge(&self.entries(), now, expiry, None, Duration::ZERO).expired
    }

    /// The eviction plan for a byte budget over the current entries: see
    /// [`plan_eviction`](crate::plan::plan_eviction) (content is the unit,
    /// least recently used first, every pick needed, nothing used within
    /// `grace` of `now`). The caller removes them with
    /// [`Index::remove_if_idle`].
    pub fn select_lru(&self, now: Timestamp, budget: u64, grace: Duration) -> Vec<ModuleKey> {
        crate::plan::plan_eviction(self.entries().iter(), now, budget, grace)
    }

    /// [`plan_purge`](crate::plan::plan_purge) over the current entries.
    pub fn plan_purge(
        &self,
        now: Timestamp,
        expiry: Duration,
        budget: Option<u64>,
        grace: Duration,
    ) -> crate::plan::PurgePlan {
        crate::plan::plan_purge(&self.entries(), now, expiry, budget, grace)
    }

    /// Brings the index, as replayed from a journal, in line with the module
    /// files on disk (`files`, by content digest) and the clock: entries whose
    /// file is gone are dropped, sizes come from the files, a last use after
    /// `now` becomes the time the file was written (or `now`). Reports what it
    /// changed and the files no entry refers to (orphans). Reads no file and
    /// no clock.
    ///
    /// Afterwards every entry's content is a file of `files` with that file's
    /// size, every file is either referred to or an orphan (never both), and
    /// the checksum records of surviving entries are kept.
    pub fn reconcile(
        &self,
        files: &impl crate::plan::FileTable,
        now: Timestamp,
    ) -> crate::plan::Reconciled {
        // One pass over the entries (this runs at every open, over every
        // entry): keys of entries without a file, sizes and future last uses
        // corrected in place, the contents in use noted.
        let mut dropped: Vec<ModuleKey> = Vec::new();
        let mut wrong_sizes = 0;
        let mut future_last_use = 0;
        let mut in_use: std::collections::HashSet<Sha256Digest, Hasher> =
            std::collections::HashSet::with_capacity_and_hasher(
                self.modules.len(),
                Hasher::default(),
            );
        for mut e in self.modules.iter_mut() {
            let Some(file) = files.facts(&e.content) else {
                dropped.push(e.key().clone());
                continue;
            };
            in_use.insert(e.content);
            if e.size != file.size {
                e.size = file.size;
                wrong_sizes += 1;
            }
            if e.last_use > now {
                e.last_use = file.written.min(now);
                future_last_use += 1;
            }
        }
        dropped.sort();
        for key in &dropped {
            self.remove(key);
        }
        let mut orphans: Vec<Sha256Digest> =
            files.digests().filter(|d| !in_use.contains(d)).collect();
        orphans.sort();
        crate::plan::Reconciled {
            dropped,
            wrong_sizes,
            future_last_use,
            orphans,
        }
    }

    /// Every entry, borrowed in place, in no particular order: for a caller
    /// that renders or sums a large index without the copy
    /// [`entries`](Self::entries) makes (a key, a URL set per entry), on one
    /// thread or several (rendering `list` of a large cache): see
    /// [`EntryRefs`]. Costs one pointer-sized reference per entry. While it
    /// is held, a write to the index waits for it: the thread holding it
    /// must not write (that would wait forever), nor wait for a thread that
    /// does.
    pub fn entry_refs(&self) -> EntryRefs<'_> {
        EntryRefs(self.modules.iter().collect())
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

    /// [`correct_size`](Self::correct_size) for every entry in one pass:
    /// `size_of(content)` is the size of the content's file, if known.
    /// Returns how many entries said otherwise.
    pub fn correct_sizes(&self, size_of: &dyn Fn(&Sha256Digest) -> Option<u64>) -> usize {
        let mut n = 0;
        for mut e in self.modules.iter_mut() {
            if let Some(size) = size_of(&e.content)
                && e.size != size
            {
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
        self.signatures.clear();
        self.changed();
    }

    /// Number of journal records [`to_events`](Self::to_events) would write:
    /// the live records a compaction keeps.
    pub fn event_count(&self) -> usize {
        let entries: usize = self
            .modules
            .iter()
            .map(|e| e.value().urls.len().max(1))
            .sum();
        let records: usize = self
            .checksums
            .iter()
            .map(|r| r.value().versions.len())
            .sum();
        entries + records + self.live_signatures().len()
    }

    /// The signature records of checksums some entry has, sorted.
    fn live_signatures(&self) -> Vec<(Sha256Digest, SignatureRecord)> {
        let live: BTreeSet<Sha256Digest> = self.modules.iter().map(|e| e.key().checksum).collect();
        let mut out: Vec<(Sha256Digest, SignatureRecord)> = self
            .signatures
            .iter()
            .filter(|r| live.contains(r.key()))
            .flat_map(|r| {
                let checksum = *r.key();
                r.value()
                    .iter()
                    .map(move |s| (checksum, s.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        out.sort_by_key(|a| (a.0, a.1.key));
        out
    }

    /// [`apply`](Self::apply) taking the event by value: its strings move
    /// into the index instead of being copied (a journal replay at open
    /// applies every record once and drops it).
    pub fn apply_owned(&self, event: IndexEvent) {
        match event {
            IndexEvent::Insert {
                key,
                content,
                size,
                url,
                at,
            } => {
                self.insert_owned(key, content, size, url, at);
            }
            IndexEvent::Record {
                url,
                checksum,
                resource_name,
                resource_version,
            } => {
                let mut rec = self.checksums.entry(url).or_default();
                rec.checksum = checksum;
                rec.set_owned(resource_name, resource_version);
                drop(rec);
                self.changed();
            }
            other => self.apply(&other),
        }
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
            } => {
                self.record_checksum(url, *checksum, resource_name, resource_version);
            }
            IndexEvent::Signed {
                checksum,
                key,
                evidence,
            } => {
                self.record_signature(*checksum, *key, evidence);
            }
        }
    }

    /// The whole index as events; replaying them into an empty index gives an
    /// equal index (used to compact a journal).
    pub fn to_events(&self) -> Vec<IndexEvent> {
        let mut out = Vec::new();
        for e in self.entries() {
            // One insert per URL (each one creates or refreshes the entry);
            // one without a URL only for an entry that has none.
            if e.urls.is_empty() {
                out.push(IndexEvent::Insert {
                    key: e.key.clone(),
                    content: e.content,
                    size: e.size,
                    url: None,
                    at: e.last_use,
                });
            }
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
        let mut records: Vec<(String, Rec)> = self
            .checksums
            .iter()
            .map(|r| (r.key().clone(), r.value().clone()))
            .collect();
        records.sort_by(|a, b| a.0.cmp(&b.0));
        for (url, rec) in records {
            for (name, version) in rec.versions {
                out.push(IndexEvent::Record {
                    url: url.clone(),
                    checksum: rec.checksum,
                    resource_name: name,
                    resource_version: version,
                });
            }
        }
        for (checksum, sig) in self.live_signatures() {
            out.push(IndexEvent::Signed {
                checksum,
                key: sig.key,
                evidence: sig.evidence,
            });
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
        urls: e.urls.to_set(),
    }
}

#[cfg(test)]
mod tests;
