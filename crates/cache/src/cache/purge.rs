//! Everything that deletes module files: expiry, the byte budget, orphans
//! and `verify --repair`.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{debug, warn};
use wasm_cache_core::{IndexEvent, ModuleKey, Removed, Sha256Digest, Timestamp};
use wasm_store_fs::{StoreError, VerifyReport};

use super::recover::compaction_due;
use super::{Inner, METADATA_WAIT, TOUCH_WAIT, lock};
use crate::Error;

/// What one purge did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PurgeReport {
    /// Entries removed because they were idle longer than the expiry.
    pub expired: Vec<ModuleKey>,
    /// Entries removed to fit the byte budget.
    pub evicted: Vec<ModuleKey>,
    /// Module files deleted.
    pub files_removed: usize,
    /// Files whose removal failed (their entries were kept).
    pub failures: usize,
}

pub(super) async fn purge_loop(
    inner: Weak<Inner>,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let start = tokio::time::Instant::now() + interval;
    let mut tick = tokio::time::interval_at(start, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let Some(inner) = inner.upgrade() else { return };
                let done = tokio::task::spawn_blocking(move || inner.purge()).await;
                if let Err(e) = done {
                    warn!(error = %e, "wasm cache purge failed");
                }
            }
            _ = stop.changed() => return,
        }
    }
}

impl Inner {
    /// Runs a purge soon, off this task, unless one is already queued or the
    /// cache is shutting down; [`Cache::shutdown`] waits for it.
    pub(super) fn queue_budget_purge(self: &Arc<Self>) {
        if self.closed.load(Ordering::Acquire)
            || self.budget_purge_queued.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let me = Arc::clone(self);
        let handle = tokio::task::spawn_blocking(move || {
            me.budget_purge_queued.store(false, Ordering::Release);
            if !me.closed.load(Ordering::Acquire) {
                me.purge();
            }
        });
        let mut running = lock(&self.budget_purges);
        running.retain(|h| !h.is_finished());
        running.push(handle);
    }

    /// One purge: pending last-use updates are appended; then, holding the
    /// journal's lock exclusively (metadata work only: reading others'
    /// appends, unlinking files, appending the removals), expiry, the byte
    /// budget and orphans; then the journal is compacted if its dead records
    /// outweigh its live ones. Without the lock (held by someone else too
    /// long), orphans are kept (they may be another process's module about
    /// to be recorded) and no compaction happens.
    pub(super) fn purge(&self) -> PurgeReport {
        self.flush_touches(Instant::now() + TOUCH_WAIT);
        let exclusive = self
            .journal
            .lock_exclusive(Instant::now() + METADATA_WAIT)
            .inspect_err(|e| warn!(error = %e, "purging without the journal's lock: orphaned files are kept"))
            .ok();
        if let Some(x) = &exclusive {
            let _serial = lock(&self.sync);
            match x.read_new() {
                Ok(tail) => self.apply_synced(&tail),
                Err(e) => {
                    warn!(error = %e, "reading other processes' wasm cache journal records failed")
                }
            }
        }
        let now = self.now();
        let mut report = PurgeReport::default();
        let mut removed = Vec::new();
        for key in self.index.expired(now, self.opts.expiry) {
            if let Some(r) = self.index.remove_if_idle(&key, now, self.opts.expiry) {
                report.expired.push(key);
                removed.push(r);
            }
        }
        if let Some(budget) = self.opts.max_bytes {
            for key in self.index.select_lru(now, budget, self.opts.grace) {
                if let Some(r) = self.index.remove_if_idle(&key, now, self.opts.grace) {
                    report.evicted.push(key);
                    removed.push(r);
                }
            }
        }
        let mut events = Vec::new();
        for e in removed {
            let content = e.entry.content;
            let _guard = self.publish_lock(&content);
            events.push(IndexEvent::Remove {
                key: e.entry.key.clone(),
            });
            if self.index.content_in_use(&content) {
                continue;
            }
            match self.store.remove(&content) {
                Ok(_) => {
                    report.files_removed += 1;
                    self.unverified.remove(&content);
                    debug!(module = %e.entry.key.redacted_name(), "removed stale wasm module");
                }
                Err(err) => {
                    // REFERENCE §5: a failed removal keeps the entry.
                    warn!(module = %e.entry.key.redacted_name(), error = %err, "failed to purge wasm module");
                    report.failures += 1;
                    events.extend(self.restore(&e));
                }
            }
        }
        if exclusive.is_some() {
            self.purge_orphans(now, &mut report);
        }
        self.meters.entries(self.index.len());
        if !events.is_empty() {
            let appended = match &exclusive {
                Some(x) => x.append(&events, true),
                None => self
                    .journal
                    .lock_shared(Instant::now() + METADATA_WAIT)
                    .and_then(|shared| shared.append(&events, true)),
            };
            if let Err(e) = appended {
                // The files are gone: the next start drops their entries.
                warn!(error = %e, "appending to the wasm cache journal failed");
            }
        }
        if let Some(x) = &exclusive
            && compaction_due(x.lines(), &self.index)
            && let Err(e) = x.compact(&self.index.to_events())
        {
            warn!(error = %e, "compacting the wasm cache journal failed");
        }
        report
    }

    /// Puts back an entry whose file could not be removed, with its URLs and
    /// checksum records, in the index; returns the journal records saying so.
    pub(super) fn restore(&self, removed: &Removed) -> Vec<IndexEvent> {
        self.index.restore(removed)
    }

    pub(super) fn purge_orphans(&self, now: Timestamp, report: &mut PurgeReport) {
        let orphans: Vec<Sha256Digest> = lock(&self.orphans).iter().copied().collect();
        for digest in orphans {
            let _guard = self.publish_lock(&digest);
            if self.index.content_in_use(&digest) {
                lock(&self.orphans).remove(&digest);
                continue;
            }
            let Some(m) = self.store.get(&digest) else {
                lock(&self.orphans).remove(&digest);
                continue;
            };
            let age = now.since(Timestamp::from_system_time(m.modified));
            if age > self.opts.expiry {
                match self.store.remove(&digest) {
                    Ok(_) => {
                        report.files_removed += 1;
                        lock(&self.orphans).remove(&digest);
                    }
                    Err(e) => {
                        report.failures += 1;
                        warn!(error = %e, "removing an orphaned module failed");
                    }
                }
            }
        }
    }

    /// [`Cache::verify`]: the store finds the mismatches (reading no lock but
    /// each file's own); each one is checked again and removed under its
    /// publish lock.
    pub(super) fn verify_all(&self, repair: bool) -> Result<VerifyReport, Error> {
        let mut report = self.store.verify_all(false)?;
        for digest in &report.ok {
            self.unverified.remove(digest);
        }
        if repair {
            for m in &report.mismatched {
                let _guard = self.publish_lock(&m.digest);
                // A fetch may have replaced the file with a good one meanwhile.
                match self.store.verify(&m.digest) {
                    Ok(false) => {}
                    Ok(true) | Err(StoreError::NotFound { .. }) => continue,
                    Err(e) => return Err(e.into()),
                }
                if self.drop_content_locked(&m.digest)? {
                    report.removed.push(m.digest);
                }
            }
        }
        Ok(report)
    }
}
