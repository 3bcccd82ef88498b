//! Open-time recovery (the journal replayed against the files on disk) and
//! reading other processes' journal appends.

use std::collections::HashSet;
use std::path::Path;
use std::time::Instant;

use tracing::{debug, info, warn};
use wasm_cache_core::{Index, IndexEvent, Sha256Digest, Timestamp};
use wasm_store_fs::{FsStore, Journal};

use super::{COMPACT_SLACK, Inner, JOURNAL_FILE, TOUCH_WAIT, lock};
use crate::Error;

pub(super) type Recovered = (FsStore, Index, Journal<IndexEvent>);

/// Opens the store and the journal, and rebuilds the index from both: entries
/// whose file is gone are dropped, sizes come from the files, last-use times
/// in the future are brought back to `now` ([`Index::reconcile`]); files no
/// entry references are orphans, deleted by a purge once older than the
/// expiry. Writes nothing unless the journal is worth compacting, and then
/// only best effort: opening (for a hit, `list`, `verify`) works on a full disk.
pub(super) fn recover(dir: &Path, now: Timestamp) -> Result<Recovered, Error> {
    // The directory listing (a `stat` per module) and the journal replay are
    // independent until they are reconciled: done side by side, an open costs
    // the longer of the two rather than their sum.
    // (A failure to create it is reported by `FsStore::open`, first.)
    let _ = std::fs::create_dir_all(dir);
    let (opened, replayed) = std::thread::scope(|scope| {
        let replay = scope.spawn(|| -> Result<_, Error> {
            let started = Instant::now();
            let journal = Journal::open(dir.join(JOURNAL_FILE))?;
            let index = Index::new();
            replay_into(&journal, &index)?;
            Ok((journal, index, started.elapsed()))
        });
        let started = Instant::now();
        let opened = FsStore::open(dir).map(|o| (o, started.elapsed()));
        let replayed = replay
            .join()
            .unwrap_or_else(|_| Err(Error::Internal("journal replay panicked".into())));
        (opened, replayed)
    });
    let ((store, report), listed) = opened?;
    let (journal, index, replayed) = replayed?;
    if !report.ignored.is_empty() {
        warn!(count = report.ignored.len(), dir = %dir.display(), "ignored files that are not modules");
    }
    let started = Instant::now();
    // The store's listing itself, read in place: no copy of 100,000 files.
    let r = index.reconcile(&store.files(), now);
    for key in &r.dropped {
        debug!(module = %key.redacted_name(), "dropping an entry whose file is gone");
    }
    if r.wrong_sizes > 0 || r.future_last_use > 0 {
        warn!(
            wrong_sizes = r.wrong_sizes,
            future_last_use = r.future_last_use,
            "corrected journal values that disagree with the files or the clock"
        );
    }
    debug!(?listed, ?replayed, reconciled = ?started.elapsed(), "open: directory listing, journal replay (side by side), reconcile");
    info!(entries = index.len(), orphans = r.orphans.len(), dir = %dir.display(), "wasm cache opened");
    if compaction_due(journal.lines(), &index) {
        match journal.lock_exclusive(Instant::now() + TOUCH_WAIT) {
            Ok(exclusive) => {
                // Whatever others appended since our read, then the rewrite.
                let compacted = exclusive.read_new().and_then(|tail| {
                    apply_tail(&index, &tail);
                    exclusive.compact(&index.to_events())
                });
                if let Err(e) = compacted {
                    warn!(error = %e, "compacting the wasm cache journal failed");
                }
            }
            Err(e) => debug!(error = %e, "journal compaction skipped"),
        }
    }
    Ok((store, index, journal))
}

/// Events handed from the journal's decoder to the thread applying them,
/// per batch.
const REPLAY_BATCH: usize = 512;

/// Reads the whole journal into `index`: decoded on this thread, applied in
/// order on another as batches arrive (no vector of every event). The two
/// halves cost about the same, so with the directory listing beside them an
/// open keeps both cores of a small machine busy (with 100,000 modules the
/// replay alone was the open's longest part, issue 19).
fn replay_into(journal: &Journal<IndexEvent>, index: &Index) -> Result<(), Error> {
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<IndexEvent>>(8);
        let apply = scope.spawn(move || {
            for batch in rx {
                for event in batch {
                    index.apply_owned(event);
                }
            }
        });
        let mut batch = Vec::with_capacity(REPLAY_BATCH);
        let mut applier_gone = false;
        let read = journal.read_new_each(&mut |event| {
            batch.push(event);
            if batch.len() == REPLAY_BATCH && !applier_gone {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(REPLAY_BATCH));
                applier_gone = tx.send(full).is_err();
            }
        });
        // What was read before an error is applied too, as before it.
        if !batch.is_empty() && !applier_gone {
            applier_gone = tx.send(batch).is_err();
        }
        drop(tx);
        let applied = apply.join();
        if applier_gone || applied.is_err() {
            return Err(Error::Internal("journal replay panicked".into()));
        }
        read.map(drop).map_err(Error::from)
    })
}

/// Whether the journal's dead lines outweigh its live records enough to
/// rewrite it.
pub(super) fn compaction_due(lines: u64, index: &Index) -> bool {
    let live = index.event_count() as u64;
    lines > live.saturating_mul(2).saturating_add(COMPACT_SLACK)
}

/// Applies records read from the journal; a restarted read (the file was
/// replaced by someone's compaction) rebuilds the index from it.
pub(super) fn apply_tail(index: &Index, tail: &wasm_store_fs::Replay<IndexEvent>) {
    if tail.restarted {
        index.clear();
    }
    for event in &tail.records {
        index.apply(event);
    }
}

impl Inner {
    /// Applies what other processes appended to the journal since the last
    /// read (best effort: a failure leaves the index as it was). Content new
    /// to this process is re-hashed once before it is served.
    pub(super) fn sync_journal(&self) {
        let _serial = lock(&self.sync);
        let tail = match self.journal.read_new() {
            Ok(t) => t,
            Err(e) => {
                warn!(error = %e, "reading other processes' wasm cache journal records failed");
                return;
            }
        };
        self.apply_synced(&tail);
    }

    pub(super) fn apply_synced(&self, tail: &wasm_store_fs::Replay<IndexEvent>) {
        if tail.records.is_empty() && !tail.restarted {
            return;
        }
        apply_tail(&self.index, tail);
        let contents: HashSet<Sha256Digest> = if tail.restarted {
            self.index.entries().iter().map(|e| e.content).collect()
        } else {
            tail.records
                .iter()
                .filter_map(|e| match e {
                    IndexEvent::Insert { content, .. } => Some(*content),
                    _ => None,
                })
                .collect()
        };
        for content in contents {
            let known = self.store.get(&content).filter(|m| m.verified);
            let file = known.or_else(|| self.store.refresh(&content));
            // No file: `serve` drops the entry when it is asked for. An
            // unverified one (the store keeps that record) is re-hashed
            // before it is first served.
            if let Some(m) = file {
                self.index.correct_size(&content, m.size);
            }
        }
        self.index.clamp_future(self.now());
        self.meters.entries(self.index.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasm_cache_core::ModuleKey;

    /// The replay applies on another thread, in batches: events whose order
    /// matters (an insert, its removal, a re-insert, touches) and that fall
    /// in different batches give the index that applying them one by one
    /// gives.
    #[test]
    fn a_pipelined_replay_applies_every_event_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let n = 3 * REPLAY_BATCH + 7;
        let key = |i: usize| {
            ModuleKey::new(
                format!("https://h.example/m{i}.wasm"),
                Sha256Digest::from_bytes([(i % 256) as u8; 32]),
            )
        };
        let mut events = Vec::new();
        for i in 0..n {
            events.push(IndexEvent::Insert {
                key: key(i),
                content: Sha256Digest::from_bytes([(i % 256) as u8; 32]),
                size: i as u64,
                url: Some(format!("https://h.example/m{i}.wasm")),
                at: Timestamp::from_millis(1_000 + i as u64),
            });
        }
        for i in (0..n).step_by(2) {
            events.push(IndexEvent::Remove { key: key(i) });
        }
        for i in (1..n).step_by(2) {
            events.push(IndexEvent::Touch {
                key: key(i),
                at: Timestamp::from_millis(1_000_000 + i as u64),
            });
        }
        // Removed in the second batch, back in the last one.
        events.push(IndexEvent::Insert {
            key: key(0),
            content: Sha256Digest::from_bytes([0; 32]),
            size: 42,
            url: None,
            at: Timestamp::from_millis(7),
        });
        Journal::open(dir.path().join(JOURNAL_FILE))
            .unwrap()
            .compact(&events)
            .unwrap();
        // A fresh handle, as an open reads it (the writer's starts at its end).
        let journal = Journal::open(dir.path().join(JOURNAL_FILE)).unwrap();

        let replayed = Index::new();
        replay_into(&journal, &replayed).unwrap();
        let model = Index::new();
        for e in &events {
            model.apply(e);
        }
        assert_eq!(replayed.len(), n / 2 + 1);
        assert_eq!(replayed.entries(), model.entries());
        assert_eq!(replayed.record_count(), model.record_count());
        // A second read finds nothing new and changes nothing.
        replay_into(&journal, &replayed).unwrap();
        assert_eq!(replayed.entries(), model.entries());
    }
}
