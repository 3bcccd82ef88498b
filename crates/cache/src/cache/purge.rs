//! Everything that deletes module files: expiry, the byte budget, orphans
//! and `verify --repair`.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{debug, warn};
use wasm_cache_core::plan;
use wasm_cache_core::{IndexEvent, ModuleKey, Removed, Timestamp};
use wasm_store_fs::VerifyReport;

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
        let plan =
            self.index
                .plan_purge(now, self.opts.expiry, self.opts.max_bytes, self.opts.grace);
        // Each removal re-checks idleness atomically: a hit since the plan
        // saves its entry. Hot hits touch the index only when folded, so
        // they are folded once more after every hot record is invalidated
        // (a hot hit either is seen by this fold or takes the full path).
        if !plan.expired.is_empty() || !plan.evicted.is_empty() {
            self.cool_down();
        }
        for key in plan.expired {
            if let Some(r) = self.index.remove_if_idle(&key, now, self.opts.expiry) {
                report.expired.push(key);
                removed.push(r);
            }
        }
        for key in plan.evicted {
            if let Some(r) = self.index.remove_if_idle(&key, now, self.opts.grace) {
                report.evicted.push(key);
                removed.push(r);
            }
        }
        let mut events = Vec::new();
        for e in removed {
            self.forget_url_hints(&e.entry.urls);
            let content = e.entry.content;
            events.push(IndexEvent::Remove {
                key: e.entry.key.clone(),
            });
            // Deleted under the store's lock of the content, only if no entry
            // refers to it any more (another name for the same module may).
            match self
                .store
                .remove_if(&content, || !self.index.content_in_use(&content))
            {
                Ok(None) => {}
                Ok(Some(_)) => {
                    report.files_removed += 1;
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
        match &exclusive {
            // On a failure the files are gone all the same: the next start
            // drops their entries.
            Some(x) if !events.is_empty() => {
                self.append_with_hints(&events, || x.append(&events, true));
            }
            Some(_) => {}
            None => self.journal_append_all(&events),
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

    /// Deletes the store's files that no entry refers to (a crash between
    /// commit and journal append, a record lost to a full disk) once written
    /// longer ago than the expiry ([`wasm_cache_core::plan::plan_orphans`]),
    /// each under the store's lock of its content and only if still
    /// unreferenced there (an adoption or a commit may have claimed it).
    pub(super) fn purge_orphans(&self, now: Timestamp, report: &mut PurgeReport) {
        let in_use = plan::contents(&self.index.entries());
        let files = self
            .store
            .list()
            .into_iter()
            .map(|m| (m.digest, Timestamp::from_system_time(m.modified)));
        for digest in plan::plan_orphans(files, &in_use, now, self.opts.expiry) {
            match self
                .store
                .remove_if(&digest, || !self.index.content_in_use(&digest))
            {
                // `Some(false)`: the listing was stale, another process
                // deleted it.
                Ok(None | Some(false)) => {}
                Ok(Some(true)) => report.files_removed += 1,
                Err(e) => {
                    report.failures += 1;
                    warn!(error = %e, "removing an orphaned module failed");
                }
            }
        }
    }

    /// [`Cache::verify`](super::Cache::verify): the store re-hashes every file
    /// under its lock of the content; with `repair`, a mismatching one's
    /// entries are dropped under that same lock just before it is deleted.
    pub(super) fn verify_all(&self, repair: bool) -> Result<VerifyReport, Error> {
        let mut events = Vec::new();
        let report = self.store.verify_all_then(repair, &mut |digest| {
            events.extend(self.forget_content(digest));
        });
        self.journal_append_all(&events);
        Ok(report?)
    }
}
