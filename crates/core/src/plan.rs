//! Purge and recovery planning: pure functions over snapshots of the index
//! and of the files on disk.
//!
//! The cache composes them with the store: it lists the files, asks these
//! functions what to do, and does it under the store's per-content lock.
//! Nothing here reads a clock or the disk; time is always a parameter.
//!
//! One boundary for every idle rule ([`is_idle`]): an entry used exactly
//! `idle` ago is kept, one unused for a millisecond longer is not. It is the
//! same for expiry, for the byte budget's grace period, for orphaned files
//! and for [`Index::remove_if_idle`](crate::Index::remove_if_idle).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::{EntryInfo, ModuleKey, Sha256Digest, Timestamp};

/// Whether something last used (or written) at `last_use` has been unused for
/// strictly longer than `idle` at `now`: the one boundary for expiry, the
/// eviction grace period, orphaned files and
/// [`Index::remove_if_idle`](crate::Index::remove_if_idle).
pub fn is_idle(now: Timestamp, last_use: Timestamp, idle: Duration) -> bool {
    now.since(last_use) > idle
}

/// What one purge should remove, decided by [`plan_purge`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PurgePlan {
    /// Entries idle longer than the expiry, sorted.
    pub expired: Vec<ModuleKey>,
    /// Entries evicted to fit the byte budget (see [`plan_eviction`]).
    pub evicted: Vec<ModuleKey>,
}

/// The purge of REFERENCE §5 plus the byte budget: first every entry idle
/// for longer than `expiry`, then, among the entries left, the eviction plan
/// of [`plan_eviction`] for `budget` (none without a budget).
pub fn plan_purge(
    entries: &[EntryInfo],
    now: Timestamp,
    expiry: Duration,
    budget: Option<u64>,
    grace: Duration,
) -> PurgePlan {
    let (expired, kept): (Vec<&EntryInfo>, Vec<&EntryInfo>) = entries
        .iter()
        .partition(|e| is_idle(now, e.last_use, expiry));
    let mut expired: Vec<ModuleKey> = expired.into_iter().map(|e| e.key.clone()).collect();
    expired.sort();
    let evicted = match budget {
        Some(budget) => plan_eviction(kept.into_iter(), now, budget, grace),
        None => Vec::new(),
    };
    PurgePlan { expired, evicted }
}

/// The eviction plan for a byte budget: the entries to remove so that the
/// total size (content shared by several entries counted once, as the store
/// keeps one file per content digest) fits in `budget`.
///
/// Content is the unit of eviction: an entry is picked only together with
/// every other entry sharing its content, and only when none of them was
/// used within `grace` of `now` (see [`is_idle`] for the boundary) and the
/// content has bytes, so every pick frees its bytes.
///
/// Which content: least recently used first (by its most recent use), up to
/// the shortest such prefix that fits; then, newest pick first, every pick
/// the budget holds without is put back. So every pick is needed (no smaller
/// plan inside it fits) and nothing newer than that prefix goes. If only
/// protected or empty content remains, the plan takes every other content
/// and the total stays above the budget.
///
/// The result is ordered by content (oldest first), then key.
pub fn plan_eviction<'a>(
    entries: impl Iterator<Item = &'a EntryInfo>,
    now: Timestamp,
    budget: u64,
    grace: Duration,
) -> Vec<ModuleKey> {
    struct Group {
        size: u64,
        newest: Timestamp,
        protected: bool,
        keys: Vec<ModuleKey>,
    }
    let mut groups: BTreeMap<Sha256Digest, Group> = BTreeMap::new();
    for e in entries {
        let g = groups.entry(e.content).or_insert_with(|| Group {
            size: 0,
            newest: Timestamp(0),
            protected: false,
            keys: Vec::new(),
        });
        g.size = g.size.max(e.size);
        g.newest = g.newest.max(e.last_use);
        g.protected |= !is_idle(now, e.last_use, grace);
        g.keys.push(e.key.clone());
    }
    // Exact sums: sizes come from a journal and may be absurd.
    let budget = u128::from(budget);
    let mut total: u128 = groups.values().map(|g| u128::from(g.size)).sum();
    let mut candidates: Vec<(Timestamp, Sha256Digest, Group)> = groups
        .into_iter()
        .filter(|(_, g)| !g.protected && g.size > 0)
        .map(|(c, g)| (g.newest, c, g))
        .collect();
    candidates.sort_by_key(|c| (c.0, c.1));
    let mut picked = Vec::new();
    for c in candidates {
        if total <= budget {
            break;
        }
        total -= u128::from(c.2.size);
        picked.push(c);
    }
    if total <= budget {
        // Newest pick first: put back every pick the budget holds without.
        let mut i = picked.len();
        while i > 0 {
            i -= 1;
            let size = u128::from(picked[i].2.size);
            if total + size <= budget {
                total += size;
                picked.remove(i);
            }
        }
    }
    let mut out = Vec::new();
    for (_, _, mut g) in picked {
        g.keys.sort();
        out.append(&mut g.keys);
    }
    out
}

/// The orphaned files (no entry refers to them: a crash between commit and
/// journal append, or another process's record lost) to delete: those
/// written longer than `expiry` before `now`, sorted.
pub fn plan_orphans(
    files: impl IntoIterator<Item = (Sha256Digest, Timestamp)>,
    in_use: &BTreeSet<Sha256Digest>,
    now: Timestamp,
    expiry: Duration,
) -> Vec<Sha256Digest> {
    let mut out: Vec<Sha256Digest> = files
        .into_iter()
        .filter(|(d, written)| !in_use.contains(d) && is_idle(now, *written, expiry))
        .map(|(d, _)| d)
        .collect();
    out.sort();
    out.dedup();
    out
}

/// What recovery learnt about one module file from a directory listing
/// (nothing read from it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct FileFacts {
    /// Its size in bytes.
    pub size: u64,
    /// When it was written.
    pub written: Timestamp,
}

impl FileFacts {
    /// Facts from their parts.
    pub fn new(size: u64, written: Timestamp) -> Self {
        Self { size, written }
    }
}

/// The module files on disk, by content digest, as
/// [`Index::reconcile`](crate::Index::reconcile) reads them: a `BTreeMap`
/// or a `HashMap` of [`FileFacts`].
pub trait FileTable {
    /// The facts of the file of `content`, if there is one.
    fn facts(&self, content: &Sha256Digest) -> Option<FileFacts>;
    /// Every file's digest, in any order.
    fn digests(&self) -> impl Iterator<Item = Sha256Digest> + '_;
}

impl FileTable for BTreeMap<Sha256Digest, FileFacts> {
    fn facts(&self, content: &Sha256Digest) -> Option<FileFacts> {
        self.get(content).copied()
    }
    fn digests(&self) -> impl Iterator<Item = Sha256Digest> + '_ {
        self.keys().copied()
    }
}

impl<S: std::hash::BuildHasher> FileTable
    for std::collections::HashMap<Sha256Digest, FileFacts, S>
{
    fn facts(&self, content: &Sha256Digest) -> Option<FileFacts> {
        self.get(content).copied()
    }
    fn digests(&self) -> impl Iterator<Item = Sha256Digest> + '_ {
        self.keys().copied()
    }
}

/// What [`Index::reconcile`](crate::Index::reconcile) changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Reconciled {
    /// Entries dropped because their file is gone, sorted.
    pub dropped: Vec<ModuleKey>,
    /// Entries whose size disagreed with their file's.
    pub wrong_sizes: usize,
    /// Entries whose last use was after `now`.
    pub future_last_use: usize,
    /// Files no entry refers to, sorted.
    pub orphans: Vec<Sha256Digest>,
}

/// The contents the entries refer to.
pub fn contents<'a>(entries: impl IntoIterator<Item = &'a EntryInfo>) -> BTreeSet<Sha256Digest> {
    entries.into_iter().map(|e| e.content).collect()
}

#[cfg(test)]
mod tests;
