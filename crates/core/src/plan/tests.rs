use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::{Index, ModuleKey, Sha256Digest, Timestamp};

fn digest(n: u8) -> Sha256Digest {
    let mut b = [0u8; 32];
    b[0] = n;
    b[31] = 0xaa;
    Sha256Digest::from_bytes(b)
}

fn entry(name: u8, content: u8, size: u64, last_use: u64) -> EntryInfo {
    let key = ModuleKey::new(format!("http://h/{name}.wasm"), digest(name));
    let idx = Index::new();
    idx.insert(
        key.clone(),
        digest(100 + content),
        size,
        None,
        Timestamp(last_use),
    );
    idx.get(&key).expect("just inserted")
}

/// Per content: its size (the largest entry's), newest use, whether an entry
/// holding it is protected, its keys.
type Groups = BTreeMap<Sha256Digest, (u64, Timestamp, bool, BTreeSet<ModuleKey>)>;

fn groups(entries: &[EntryInfo], now: Timestamp, grace: Duration) -> Groups {
    let mut g: Groups = BTreeMap::new();
    for e in entries {
        let x = g.entry(e.content).or_default();
        x.0 = x.0.max(e.size);
        x.1 = x.1.max(e.last_use);
        x.2 |= !is_idle(now, e.last_use, grace);
        x.3.insert(e.key.clone());
    }
    g
}

fn total<'a>(sizes: impl Iterator<Item = &'a u64>) -> u128 {
    sizes.map(|s| u128::from(*s)).sum()
}

/// Entries over few contents (so content is often shared), sizes per entry
/// (a journal may disagree with itself), uses in the past.
fn entries() -> impl Strategy<Value = Vec<EntryInfo>> {
    proptest::collection::vec((0u8..6, 0u64..400, 0u64..1_000), 0..12).prop_map(|v| {
        v.into_iter()
            .enumerate()
            .map(|(i, (content, size, last))| {
                entry(u8::try_from(i).unwrap_or(0), content, size, last)
            })
            .collect()
    })
}

/// Entries, the time now (after every use) and a byte budget in the range of
/// their totals.
fn scene() -> impl Strategy<Value = (Vec<EntryInfo>, u64, u64)> {
    (entries(), 1_000u64..1_600, 0u64..1_500)
}

/// Checks one eviction plan against the model, by brute force over every
/// set of contents.
fn check_eviction(
    entries: &[EntryInfo],
    now: Timestamp,
    budget: u64,
    grace: Duration,
) -> Result<(), TestCaseError> {
    let plan = plan_eviction(entries.iter(), now, budget, grace);
    let g = groups(entries, now, grace);
    let content_of: BTreeMap<&ModuleKey, Sha256Digest> =
        entries.iter().map(|e| (&e.key, e.content)).collect();
    let chosen: BTreeSet<ModuleKey> = plan.iter().cloned().collect();
    prop_assert_eq!(chosen.len(), plan.len(), "a key picked twice");
    let picked: BTreeSet<Sha256Digest> = plan.iter().map(|k| content_of[k]).collect();
    let evictable: BTreeSet<Sha256Digest> = g
        .iter()
        .filter(|(_, x)| !x.2 && x.0 > 0)
        .map(|(c, _)| *c)
        .collect();
    for c in &picked {
        let x = &g[c];
        // Every pick frees bytes: its whole content goes, none of it protected.
        prop_assert!(!x.2, "picked content a protected entry holds");
        prop_assert!(x.0 > 0, "picked content that frees nothing");
        prop_assert!(x.3.is_subset(&chosen), "picked part of a content only");
    }
    // The grace boundary: an entry used exactly `grace` ago is protected.
    for e in entries {
        if now.since(e.last_use) <= grace {
            prop_assert!(!chosen.contains(&e.key), "evicted within grace");
        }
    }
    let all = total(g.values().map(|x| &x.0));
    let left = |set: &BTreeSet<Sha256Digest>| {
        all - total(
            g.iter()
                .filter(|(c, _)| set.contains(*c))
                .map(|(_, x)| &x.0),
        )
    };
    let fits = left(&picked) <= u128::from(budget);
    if fits {
        // No smaller plan: no proper subset of the picks fits.
        let picks: Vec<Sha256Digest> = picked.iter().copied().collect();
        for mask in 0u32..(1 << picks.len()) - 1 {
            let subset: BTreeSet<Sha256Digest> = picks
                .iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, c)| *c)
                .collect();
            prop_assert!(
                left(&subset) > u128::from(budget),
                "a smaller plan fits: {:?} of {:?}",
                subset,
                picked
            );
        }
    } else {
        // Over budget only when everything evictable goes.
        prop_assert_eq!(
            &picked,
            &evictable,
            "over budget with evictable content left"
        );
    }
    // Least recently used first: nothing goes that is newer than the shortest
    // LRU prefix that fits.
    let mut lru: Vec<(Timestamp, Sha256Digest)> = evictable.iter().map(|c| (g[c].1, *c)).collect();
    lru.sort();
    let mut prefix = BTreeSet::new();
    for (_, c) in &lru {
        if left(&prefix) <= u128::from(budget) {
            break;
        }
        prefix.insert(*c);
    }
    prop_assert!(
        picked.is_subset(&prefix),
        "picked newer content than needed"
    );
    Ok(())
}

#[test]
fn eviction_frees_only_what_it_must() {
    // a (old, 10), b (older, 10), c (newest evictable, 100); 100 over budget:
    // the LRU prefix is all three, but c alone does it.
    let e = [
        entry(1, 1, 10, 100),
        entry(2, 2, 10, 50),
        entry(3, 3, 100, 200),
        entry(4, 4, 50, 990),
    ];
    let plan = plan_eviction(e.iter(), Timestamp(1_000), 70, Duration::from_millis(100));
    assert_eq!(plan, vec![e[2].key.clone()]);
    // Nothing over budget: nothing goes.
    assert!(plan_eviction(e.iter(), Timestamp(1_000), 170, Duration::ZERO).is_empty());
}

#[test]
fn the_grace_boundary_is_one_rule() {
    let e = [entry(1, 1, 10, 1_000)];
    let grace = Duration::from_millis(500);
    assert!(!is_idle(Timestamp(1_500), Timestamp(1_000), grace));
    assert!(is_idle(Timestamp(1_501), Timestamp(1_000), grace));
    assert!(plan_eviction(e.iter(), Timestamp(1_500), 0, grace).is_empty());
    assert_eq!(
        plan_eviction(e.iter(), Timestamp(1_501), 0, grace),
        vec![e[0].key.clone()]
    );
    let files = [(digest(1), Timestamp(1_000))];
    assert!(plan_orphans(files, &BTreeSet::new(), Timestamp(1_500), grace).is_empty());
    assert_eq!(
        plan_orphans(files, &BTreeSet::new(), Timestamp(1_501), grace),
        vec![digest(1)]
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_eviction_plan_is_whole_needed_and_lru(
        (entries, now, budget) in scene(),
        grace in 0u64..700,
    ) {
        check_eviction(&entries, Timestamp(now), budget, Duration::from_millis(grace))?;
    }

    #[test]
    fn an_entry_used_exactly_grace_ago_is_kept(
        (entries, now, budget) in scene(),
        pick: prop::sample::Index,
    ) {
        prop_assume!(!entries.is_empty());
        // The grace period is exactly the age of one entry: it must stay.
        let at = &entries[pick.index(entries.len())];
        let grace = Timestamp(now).since(at.last_use);
        let plan = plan_eviction(entries.iter(), Timestamp(now), budget, grace);
        prop_assert!(!plan.contains(&at.key));
        check_eviction(&entries, Timestamp(now), budget, grace)?;
    }

    #[test]
    fn purge_expires_then_evicts_the_rest(
        entries in entries(),
        now in 1_000u64..1_600,
        expiry in 0u64..1_600,
        grace in 0u64..700,
        budget in proptest::option::of(0u64..1_500),
    ) {
        let (now, expiry_d, grace_d) = (Timestamp(now), Duration::from_millis(expiry), Duration::from_millis(grace));
        let plan = plan_purge(&entries, now, expiry_d, budget, grace_d);
        let want: BTreeSet<ModuleKey> = entries.iter()
            .filter(|e| now.since(e.last_use) > expiry_d).map(|e| e.key.clone()).collect();
        prop_assert_eq!(plan.expired.iter().cloned().collect::<BTreeSet<_>>(), want.clone());
        prop_assert!(plan.expired.windows(2).all(|w| w[0] < w[1]), "sorted");
        let rest: Vec<EntryInfo> = entries.iter().filter(|e| !want.contains(&e.key)).cloned().collect();
        match budget {
            Some(b) => {
                prop_assert_eq!(&plan.evicted, &plan_eviction(rest.iter(), now, b, grace_d));
                check_eviction(&rest, now, b, grace_d)?;
            }
            None => prop_assert!(plan.evicted.is_empty()),
        }
    }

    #[test]
    fn orphans_go_only_unreferenced_and_past_expiry(
        files in proptest::collection::vec((0u8..8, 0u64..1_000), 0..10),
        in_use in proptest::collection::btree_set(0u8..8, 0..5),
        now in 1_000u64..1_600,
        expiry in 0u64..1_000,
    ) {
        let in_use: BTreeSet<Sha256Digest> = in_use.into_iter().map(digest).collect();
        let files: Vec<(Sha256Digest, Timestamp)> = files.into_iter().map(|(d, t)| (digest(d), Timestamp(t))).collect();
        let got = plan_orphans(files.iter().copied(), &in_use, Timestamp(now), Duration::from_millis(expiry));
        let want: BTreeSet<Sha256Digest> = files.iter()
            .filter(|(d, t)| !in_use.contains(d) && now - t.0 > expiry).map(|(d, _)| *d).collect();
        prop_assert_eq!(got.iter().copied().collect::<BTreeSet<_>>(), want);
        prop_assert!(got.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn reconcile_leaves_every_file_accounted_for_once(
        inserts in proptest::collection::vec((0u8..3, 0u8..6, 0u64..400, 0u64..3_000), 0..12),
        records in proptest::collection::vec((0u8..3, 0u8..6, 0u8..3), 0..8),
        files in proptest::collection::btree_map(0u8..8, (0u64..400, 0u64..1_000), 0..8),
        now in 1_000u64..2_000,
    ) {
        // Checksum `s` names content `s % 4`: OCI manifests of one module share it.
        let content_of = |s: u8| digest(100 + s % 4);
        let url = |u: u8| format!("http://h/{u}.wasm");
        let idx = Index::new();
        for (u, s, size, at) in &inserts {
            idx.insert(ModuleKey::new(url(*u), digest(*s)), content_of(*s), *size, Some(&url(*u)), Timestamp(*at));
        }
        for (u, s, v) in &records {
            idx.record_checksum(&url(*u), digest(*s), "r", &v.to_string());
        }
        let files: BTreeMap<Sha256Digest, FileFacts> = files.into_iter()
            .map(|(c, (size, written))| (digest(100 + c), FileFacts::new(size, Timestamp(written)))).collect();
        let before = idx.entries();
        let records_before: BTreeMap<String, crate::ChecksumRecord> = (0..3u8)
            .filter_map(|u| idx.checksum_record(&url(u)).map(|r| (url(u), r))).collect();
        let now = Timestamp(now);

        let r = idx.reconcile(&files, now);

        let after = idx.entries();
        // Nothing indexed that is not on disk; sizes are the files'; no future use.
        for e in &after {
            let f = files.get(&e.content);
            prop_assert!(f.is_some(), "indexed without a file");
            prop_assert_eq!(e.size, f.map_or(0, |f| f.size));
            prop_assert!(e.last_use <= now);
        }
        // Exactly the entries without a file were dropped; the others kept.
        let dropped: Vec<ModuleKey> = before.iter().filter(|e| !files.contains_key(&e.content)).map(|e| e.key.clone()).collect();
        prop_assert_eq!(&r.dropped, &dropped);
        let kept: Vec<ModuleKey> = before.iter().filter(|e| files.contains_key(&e.content)).map(|e| e.key.clone()).collect();
        prop_assert_eq!(after.iter().map(|e| e.key.clone()).collect::<Vec<_>>(), kept);
        // Every file on disk is accounted for exactly once: referred to by
        // entries, or an orphan.
        let in_use = contents(&after);
        let orphans: BTreeSet<Sha256Digest> = r.orphans.iter().copied().collect();
        prop_assert_eq!(orphans.len(), r.orphans.len(), "an orphan listed twice");
        for d in files.keys() {
            prop_assert!(in_use.contains(d) != orphans.contains(d), "{:?} in use and orphan, or neither", d);
        }
        prop_assert!(orphans.iter().all(|d| files.contains_key(d)));
        // A last use in the future became the file's time (or now).
        for (b, a) in before.iter().filter(|e| files.contains_key(&e.content)).zip(&after) {
            let want = if b.last_use > now { files[&b.content].written.min(now) } else { b.last_use };
            prop_assert_eq!(a.last_use, want);
            prop_assert_eq!(&a.urls, &b.urls);
        }
        // Checksum records of surviving content are kept as they were.
        for (u, rec) in &records_before {
            let survives = after.iter().any(|e| e.key.checksum == rec.checksum && e.urls.contains(u));
            if survives {
                prop_assert_eq!(idx.checksum_record(u), Some(rec.clone()));
            }
        }
    }
}
