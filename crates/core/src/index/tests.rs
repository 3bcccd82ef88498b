use super::*;
use proptest::prelude::*;

fn sum(i: u8) -> Sha256Digest {
    Sha256Digest::from_bytes([i; 32])
}

fn url(s: &str) -> ModuleUrl {
    ModuleUrl::parse(s).unwrap()
}

const URLS: [&str; 6] = [
    "http://a.example/m.wasm",
    "https://b.example/m.wasm",
    "oci://r.io/x:v1",
    "oci://r.io/x:latest",
    "oci://r.io/y",
    "oci://r.io/x@sha256:0101010101010101010101010101010101010101010101010101010101010101",
];

fn req<'a>(
    u: &'a ModuleUrl,
    checksum: Option<Sha256Digest>,
    rv: &'a str,
    policy: PullPolicy,
) -> LookupRequest<'a> {
    LookupRequest {
        url: u,
        checksum,
        resource_name: "ns/plugin",
        resource_version: rv,
        policy,
    }
}

#[test]
fn reference_scenarios_of_the_lookup() {
    let idx = Index::new();
    let tagged = url("oci://r.io/x:v1");
    let t0 = Timestamp(1_000);
    // Cache miss: nothing known.
    assert_eq!(
        idx.lookup(&req(&tagged, None, "1", PullPolicy::Unspecified), t0),
        Lookup::Miss {
            name: "oci://r.io/x".into(),
            expected: None
        }
    );
    // After a pull the tagged URL hits with the same or another version (tag not latest).
    let key = ModuleKey::new(tagged.module_name(), sum(1));
    idx.insert(key.clone(), sum(1), 10, Some(tagged.as_str()), t0);
    idx.record_checksum(tagged.as_str(), sum(1), "ns/plugin", "1");
    assert_eq!(
        idx.lookup(&req(&tagged, None, "2", PullPolicy::Unspecified), t0),
        Lookup::Hit {
            key: key.clone(),
            content: sum(1)
        }
    );
    // Always with a new version pulls; with the recorded version it does not.
    assert!(matches!(
        idx.lookup(&req(&tagged, None, "3", PullPolicy::Always), t0),
        Lookup::Miss { .. }
    ));
    assert_eq!(
        idx.lookup(&req(&tagged, None, "2", PullPolicy::Always), t0),
        Lookup::Hit {
            key: key.clone(),
            content: sum(1)
        }
    );
    // ... and the failed "3" was not recorded.
    assert_eq!(
        idx.checksum_record(tagged.as_str())
            .unwrap()
            .resource_versions["ns/plugin"],
        "2"
    );
    // A pinned checksum hits whatever the policy.
    assert_eq!(
        idx.lookup(&req(&tagged, Some(sum(1)), "9", PullPolicy::Always), t0),
        Lookup::Hit {
            key: key.clone(),
            content: sum(1)
        }
    );
    // A pinned checksum that is not cached is an expected checksum for the fetch.
    assert_eq!(
        idx.lookup(&req(&tagged, Some(sum(2)), "9", PullPolicy::Always), t0),
        Lookup::Miss {
            name: "oci://r.io/x".into(),
            expected: Some(sum(2))
        }
    );
    // :latest pulls unless IfNotPresent.
    let latest = url("oci://r.io/x:latest");
    idx.insert(key.clone(), sum(1), 10, Some(latest.as_str()), t0);
    idx.record_checksum(latest.as_str(), sum(1), "ns/plugin", "1");
    assert!(matches!(
        idx.lookup(&req(&latest, None, "2", PullPolicy::Unspecified), t0),
        Lookup::Miss { .. }
    ));
    assert!(matches!(
        idx.lookup(&req(&latest, None, "2", PullPolicy::IfNotPresent), t0),
        Lookup::Hit { .. }
    ));
    // A digest in the URL is the checksum.
    let pinned = url(URLS[5]);
    assert_eq!(
        idx.lookup(&req(&pinned, None, "", PullPolicy::Always), t0),
        Lookup::Hit {
            key,
            content: sum(1)
        }
    );
    // http with Unspecified: same version hits, another version pulls.
    let h = url(URLS[0]);
    let hk = ModuleKey::new(h.module_name(), sum(3));
    idx.insert(hk.clone(), sum(3), 5, Some(h.as_str()), t0);
    idx.record_checksum(h.as_str(), sum(3), "ns/plugin", "1");
    assert_eq!(
        idx.lookup(&req(&h, None, "1", PullPolicy::Unspecified), t0),
        Lookup::Hit {
            key: hk,
            content: sum(3)
        }
    );
    assert!(matches!(
        idx.lookup(&req(&h, None, "2", PullPolicy::Unspecified), t0),
        Lookup::Miss { expected: None, .. }
    ));
}

#[test]
fn other_digest_algorithms_skip_the_cache() {
    let idx = Index::new();
    let u =
        url("oci://r.io/x@sha512:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef");
    idx.record_checksum(u.as_str(), sum(1), "r", "1");
    idx.insert(
        ModuleKey::new(u.module_name(), sum(1)),
        sum(1),
        1,
        None,
        Timestamp(0),
    );
    assert_eq!(
        idx.lookup(&req(&u, None, "1", PullPolicy::IfNotPresent), Timestamp(0)),
        Lookup::Miss {
            name: "oci://r.io/x".into(),
            expected: None
        }
    );
}

#[test]
fn purge_removes_entry_and_its_records_but_keeps_moved_urls() {
    let idx = Index::new();
    let a = url(URLS[0]);
    let k1 = ModuleKey::new(a.module_name(), sum(1));
    let k2 = ModuleKey::new(a.module_name(), sum(2));
    idx.insert(k1.clone(), sum(1), 1, Some(a.as_str()), Timestamp(0));
    idx.insert(k2.clone(), sum(2), 1, Some(a.as_str()), Timestamp(10_000));
    idx.record_checksum(a.as_str(), sum(2), "r", "2");
    let exp = idx.expired(Timestamp(10_000), Duration::from_secs(5));
    assert_eq!(exp, vec![k1.clone()]);
    assert!(
        idx.remove_if_idle(&k1, Timestamp(10_000), Duration::from_secs(5))
            .is_some()
    );
    // The URL moved on to sum(2): its record stays.
    assert_eq!(idx.checksum_record(a.as_str()).unwrap().checksum, sum(2));
    // A touch in between saves an entry from purge.
    idx.touch(&k2, Timestamp(20_000));
    assert!(
        idx.remove_if_idle(&k2, Timestamp(20_001), Duration::from_secs(5))
            .is_none()
    );
    assert!(idx.remove(&k2).is_some());
    assert_eq!(idx.record_count(), 0);
}

#[test]
fn eviction_never_picks_content_a_protected_entry_still_holds() {
    // Issue 14.5: `a` is the oldest entry, but `b` (same content, used just
    // now) keeps its file: removing `a` frees nothing. `c` must go instead.
    let idx = Index::new();
    let a = ModuleKey::new("http://a/m.wasm", sum(1));
    let b = ModuleKey::new("http://b/m.wasm", sum(1));
    let c = ModuleKey::new("http://c/m.wasm", sum(2));
    idx.insert(a.clone(), sum(1), 100, None, Timestamp(0));
    idx.insert(c.clone(), sum(2), 100, None, Timestamp(1_000));
    idx.insert(b.clone(), sum(1), 100, None, Timestamp(99_000));
    let plan = idx.select_lru(Timestamp(100_000), 100, Duration::from_secs(10));
    assert_eq!(plan, vec![c]);
}

#[test]
fn the_grace_boundary_is_the_same_for_every_function() {
    // Issue 14.5: an entry used exactly `grace` ago is kept by the plan and by
    // `remove_if_idle`; one millisecond later both let it go.
    let idx = Index::new();
    let a = ModuleKey::new("http://a/m.wasm", sum(1));
    idx.insert(a.clone(), sum(1), 100, None, Timestamp(1_000));
    let grace = Duration::from_millis(500);
    let at_boundary = Timestamp(1_500);
    assert!(idx.select_lru(at_boundary, 0, grace).is_empty());
    assert!(idx.remove_if_idle(&a, at_boundary, grace).is_none());
    assert!(idx.expired(at_boundary, grace).is_empty());
    let after = Timestamp(1_501);
    assert_eq!(idx.select_lru(after, 0, grace), vec![a.clone()]);
    assert_eq!(idx.expired(after, grace), vec![a.clone()]);
    assert!(idx.remove_if_idle(&a, after, grace).is_some());
}

#[test]
fn restore_puts_back_the_entry_its_urls_and_its_checksum_records() {
    // Issue 14.4: a failed file removal keeps the entry (REFERENCE §5), and
    // with it the URL's checksum record, or the next unpinned request for the
    // URL costs a round trip it did not need.
    let idx = Index::new();
    let u = url("oci://r.io/x:v1");
    let k = ModuleKey::new(u.module_name(), sum(1));
    idx.insert(k.clone(), sum(7), 10, Some(u.as_str()), Timestamp(0));
    idx.record_checksum(u.as_str(), sum(1), "ns/p", "3");
    let before = (idx.entries(), idx.checksum_record(u.as_str()));
    let removed = idx
        .remove_if_idle(&k, Timestamp(10_000), Duration::from_secs(1))
        .unwrap();
    assert_eq!(idx.record_count(), 0);
    let events = idx.restore(&removed);
    assert_eq!((idx.entries(), idx.checksum_record(u.as_str())), before);
    // The events rebuild the same state on replay.
    let replayed = Index::new();
    for e in &events {
        replayed.apply(e);
    }
    assert_eq!(replayed.entries(), idx.entries());
    assert_eq!(replayed.checksum_record(u.as_str()), before.1);
    // A record made meanwhile (a newer pull) is not overwritten.
    let removed = idx
        .remove_if_idle(&k, Timestamp(20_000), Duration::from_secs(1))
        .unwrap();
    idx.record_checksum(u.as_str(), sum(2), "ns/p", "4");
    idx.restore(&removed);
    assert_eq!(idx.checksum_record(u.as_str()).unwrap().checksum, sum(2));
}

#[test]
fn a_hit_records_like_a_download() {
    // Issue 14.1 (REFERENCE §3.4): a hit with a pinned checksum records it for
    // the URL and the asking resource's version; a repeat changes nothing.
    let idx = Index::new();
    let u = url("oci://r.io/x:v1");
    let k = ModuleKey::new(u.module_name(), sum(1));
    idx.insert(k.clone(), sum(1), 10, Some(u.as_str()), Timestamp(0));
    let r = req(&u, Some(sum(1)), "5", PullPolicy::Always);
    assert!(matches!(idx.lookup(&r, Timestamp(1)), Lookup::Hit { .. }));
    let ev = idx.record_hit(&r, &k).expect("a first hit records");
    assert_eq!(
        ev,
        IndexEvent::Record {
            url: u.as_str().into(),
            checksum: sum(1),
            resource_name: "ns/plugin".into(),
            resource_version: "5".into(),
        }
    );
    assert_eq!(
        idx.record_hit(&r, &k),
        None,
        "nothing changed, nothing to write"
    );
    // The next unpinned request at that version is a hit without a round trip.
    let unpinned = req(&u, None, "5", PullPolicy::Always);
    assert!(matches!(
        idx.lookup(&unpinned, Timestamp(2)),
        Lookup::Hit { .. }
    ));
    // OCI URLs pinned with `@` never enter the checksum records.
    let pinned = url(URLS[5]);
    let kp = ModuleKey::new(pinned.module_name(), sum(1));
    assert_eq!(
        idx.record_hit(&req(&pinned, None, "5", PullPolicy::Always), &kp),
        None
    );
    assert!(idx.checksum_record(pinned.as_str()).is_none());
}

#[test]
fn debug_output_never_shows_credentials_or_query_strings() {
    // Issue 14.3: http(s) module names are whole URLs.
    let raw = "https://admin:HUNTER2@host.example/m.wasm?sig=SECRET";
    let u = url(raw);
    let idx = Index::new();
    let k = ModuleKey::new(u.module_name(), sum(1));
    idx.insert(k.clone(), sum(1), 10, Some(raw), Timestamp(0));
    idx.record_checksum(raw, sum(1), "r", "1");
    let removed = idx
        .remove_if_idle(&k, Timestamp(10_000), Duration::ZERO)
        .unwrap();
    let events = idx.restore(&removed);
    let lookup = idx.lookup(
        &req(&u, Some(sum(2)), "1", PullPolicy::Always),
        Timestamp(0),
    );
    let refs: String = idx.entry_refs().iter().map(|e| format!("{e:?}")).collect();
    let shown = format!(
        "{k:?} {:?} {removed:?} {events:?} {lookup:?} {idx:?} {} {refs}",
        idx.entries(),
        k.redacted_name()
    );
    for secret in ["admin", "HUNTER2", "sig=", "SECRET"] {
        assert!(!shown.contains(secret), "{secret} in {shown}");
    }
    assert!(shown.contains("host.example/m.wasm"));
}

#[test]
fn shared_checksums_count_once_and_stay_in_use() {
    let idx = Index::new();
    let a = ModuleKey::new("http://a/m.wasm", sum(1));
    let b = ModuleKey::new("http://b/m.wasm", sum(1));
    idx.insert(a.clone(), sum(1), 100, None, Timestamp(0));
    idx.insert(b.clone(), sum(1), 100, None, Timestamp(1));
    assert_eq!(idx.total_bytes(), 100);
    // Budget 0: both must go, since removing one frees nothing.
    assert_eq!(
        idx.select_lru(Timestamp(1_000_000), 0, Duration::ZERO),
        vec![a.clone(), b]
    );
    idx.remove(&a);
    assert!(idx.content_in_use(&sum(1)));
}

/// Journal values are not trusted: sizes that would wrap the sum saturate,
/// a last use in the future is brought back to now (so the entry expires and
/// is evicted like any other), and a wrong size is corrected from the file.
#[test]
fn untrusted_sizes_and_future_times_are_tamed() {
    let idx = Index::new();
    let now = Timestamp(10_000_000);
    let year = 365 * 24 * 3600 * 1000;
    idx.insert(
        ModuleKey::new("a", sum(1)),
        sum(1),
        u64::MAX,
        None,
        Timestamp(now.0 + year),
    );
    idx.insert(ModuleKey::new("b", sum(2)), sum(2), 0, None, now);
    idx.insert(ModuleKey::new("c", sum(3)), sum(3), 5, None, now);
    assert_eq!(idx.total_bytes(), u64::MAX, "saturates instead of wrapping");
    // Before clamping, the future entry never expires.
    assert!(
        !idx.expired(Timestamp(now.0 + 1), Duration::ZERO)
            .contains(&ModuleKey::new("a", sum(1)))
    );
    let written = Timestamp(now.0 - 5);
    assert_eq!(
        idx.clamp_future_to(now, &|c| (*c == sum(1)).then_some(written)),
        1
    );
    assert_eq!(idx.clamp_future(now), 0);
    assert_eq!(
        idx.get(&ModuleKey::new("a", sum(1))).unwrap().last_use,
        written
    );
    assert_eq!(idx.expired(Timestamp(now.0 + 1), Duration::ZERO).len(), 3);
    assert_eq!(idx.correct_size(&sum(1), 100), 1);
    assert_eq!(idx.correct_size(&sum(2), 200), 1);
    assert_eq!(idx.correct_size(&sum(3), 5), 0);
    assert_eq!(idx.total_bytes(), 305);
    assert_eq!(idx.correct_sizes(&|c| (*c == sum(3)).then_some(7)), 1);
    assert_eq!(idx.correct_sizes(&|_| None), 0);
    assert_eq!(idx.total_bytes(), 307);
    // With a size of u64::MAX still in, a budget of 0 evicts everything
    // instead of wrapping the running total.
    idx.insert(ModuleKey::new("d", sum(4)), sum(4), u64::MAX, None, now);
    let lru = idx.select_lru(Timestamp(now.0 + 1), 0, Duration::ZERO);
    assert_eq!(lru.len(), 4, "{lru:?}");
    assert_eq!(idx.event_count(), idx.to_events().len());
    idx.clear();
    assert!(idx.is_empty());
}

#[test]
fn events_round_trip() {
    let idx = Index::new();
    idx.insert(
        ModuleKey::new("oci://r.io/x", sum(1)),
        sum(7),
        7,
        Some("oci://r.io/x:v1"),
        Timestamp(5),
    );
    idx.insert(
        ModuleKey::new("oci://r.io/x", sum(2)),
        sum(9),
        9,
        None,
        Timestamp(6),
    );
    idx.record_checksum("oci://r.io/x:v1", sum(1), "a", "1");
    idx.record_checksum("oci://r.io/x:v1", sum(1), "b", "4");
    let replayed = Index::new();
    let owned = Index::new();
    for e in idx.to_events() {
        let json = serde_json::to_string(&e).unwrap();
        replayed.apply(&serde_json::from_str(&json).unwrap());
        owned.apply_owned(serde_json::from_str(&json).unwrap());
    }
    assert_eq!(replayed.entries(), idx.entries());
    assert_eq!(
        replayed.checksum_record("oci://r.io/x:v1"),
        idx.checksum_record("oci://r.io/x:v1")
    );
    // Applying by value (the replay at open) builds the same index.
    assert_eq!(owned.entries(), replayed.entries());
    assert_eq!(owned.checksum_records().len(), replayed.record_count());
    assert_eq!(
        owned.checksum_record("oci://r.io/x:v1"),
        replayed.checksum_record("oci://r.io/x:v1")
    );
}

/// Compaction writes one insert per URL (and a URL-less one only for an
/// entry without URLs); a journal compacted by an older version, with a
/// URL-less insert before each entry's URL inserts, replays to the same
/// index.
#[test]
fn compaction_writes_one_insert_per_url_and_reads_the_older_form() {
    let idx = Index::new();
    let a = ModuleKey::new("http://h/a.wasm", sum(1));
    idx.insert(a.clone(), sum(1), 1, Some("http://h/a.wasm"), Timestamp(5));
    idx.insert(a.clone(), sum(1), 1, Some("http://h/a2.wasm"), Timestamp(6));
    idx.insert(ModuleKey::new("n", sum(2)), sum(2), 2, None, Timestamp(7));
    idx.record_checksum("http://h/a.wasm", sum(1), "r", "1");
    let events = idx.to_events();
    let inserts = events
        .iter()
        .filter(|e| matches!(e, IndexEvent::Insert { .. }))
        .count();
    assert_eq!(inserts, 3, "{events:?}");
    assert_eq!(idx.event_count(), events.len());
    // The older form: an insert without URL first, for every entry.
    let mut older = Vec::new();
    for e in idx.entries() {
        older.push(IndexEvent::Insert {
            key: e.key.clone(),
            content: e.content,
            size: e.size,
            url: None,
            at: e.last_use,
        });
        for u in e.urls {
            older.push(IndexEvent::Insert {
                key: e.key.clone(),
                content: e.content,
                size: e.size,
                url: Some(u),
                at: e.last_use,
            });
        }
    }
    older.extend(
        events
            .iter()
            .filter(|e| !matches!(e, IndexEvent::Insert { .. }))
            .cloned(),
    );
    for replay in [events, older] {
        let replayed = Index::new();
        for e in replay {
            let json = serde_json::to_string(&e).unwrap();
            replayed.apply_owned(serde_json::from_str(&json).unwrap());
        }
        assert_eq!(replayed.entries(), idx.entries());
        assert_eq!(
            replayed.checksum_record("http://h/a.wasm"),
            idx.checksum_record("http://h/a.wasm")
        );
    }
}

#[test]
fn signature_records_live_with_their_checksum() {
    let idx = Index::new();
    let a = ModuleKey::new("oci://r.io/x", sum(1));
    let b = ModuleKey::new("oci://r.io/y", sum(1));
    // Recorded before the entry exists (an OCI digest is verified before
    // its layer is downloaded), kept once it does.
    assert!(idx.record_signature(sum(1), sum(30), "e1"));
    assert!(!idx.record_signature(sum(1), sum(30), "e1"), "unchanged");
    assert!(
        idx.record_signature(sum(1), sum(30), "e2"),
        "new evidence replaces"
    );
    assert!(idx.record_signature(sum(1), sum(31), "f"));
    assert!(idx.record_signature(sum(2), sum(30), "orphan"));
    for k in 40..(40 + MAX_SIGNATURES_PER_CHECKSUM as u8) {
        idx.record_signature(sum(1), sum(k), "x");
    }
    assert_eq!(idx.signatures(&sum(1)).len(), MAX_SIGNATURES_PER_CHECKSUM);
    idx.insert(a.clone(), sum(7), 7, Some("oci://r.io/x:v1"), Timestamp(5));
    idx.insert(b.clone(), sum(7), 7, None, Timestamp(5));

    // Compaction keeps the records of checksums an entry has, and only those.
    let replayed = Index::new();
    for e in idx.to_events() {
        let json = serde_json::to_string(&e).unwrap();
        replayed.apply(&serde_json::from_str(&json).unwrap());
    }
    assert_eq!(replayed.signatures(&sum(1)), idx.signatures(&sum(1)));
    assert_eq!(
        idx.signatures(&sum(1))[0],
        SignatureRecord::new(sum(30), "e2")
    );
    assert!(replayed.signatures(&sum(2)).is_empty());
    assert_eq!(replayed.event_count(), replayed.to_events().len());

    // A record that did not verify is forgotten.
    idx.forget_signature(&sum(1), &sum(31));
    assert!(idx.signatures(&sum(1)).iter().all(|r| r.key != sum(31)));

    // Dropped with the last entry of the checksum, restored with it.
    idx.remove(&a);
    assert!(!idx.signatures(&sum(1)).is_empty(), "b still has it");
    let removed = idx
        .remove_if_idle(&b, Timestamp(100), Duration::ZERO)
        .unwrap();
    assert!(idx.signatures(&sum(1)).is_empty());
    assert_eq!(removed.signatures.len(), MAX_SIGNATURES_PER_CHECKSUM - 1);
    let events = idx.restore(&removed);
    assert_eq!(idx.signatures(&sum(1)), removed.signatures);
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, IndexEvent::Signed { .. }))
            .count(),
        removed.signatures.len()
    );
    // Replaying a removal drops them too.
    replayed.apply(&IndexEvent::Remove { key: a });
    replayed.apply(&IndexEvent::Remove { key: b });
    assert!(replayed.signatures(&sum(1)).is_empty());
    // Debug shows no evidence.
    let debug = format!(
        "{:?}",
        IndexEvent::Signed {
            checksum: sum(1),
            key: sum(2),
            evidence: "secret-looking evidence".into()
        }
    );
    assert!(!debug.contains("secret-looking"), "{debug}");
}

#[test]
fn journals_without_signature_records_still_load() {
    // Lines as an earlier version wrote them (no "signed" op); and a
    // "signed" record an earlier version would skip as unknown.
    let old = [
        r#"{"op":"insert","key":{"name":"oci://r.io/x","checksum":"0101010101010101010101010101010101010101010101010101010101010101"},"content":"0707070707070707070707070707070707070707070707070707070707070707","size":7,"url":"oci://r.io/x:v1","at":5}"#,
        r#"{"op":"record","url":"oci://r.io/x:v1","checksum":"0101010101010101010101010101010101010101010101010101010101010101","resource_name":"a","resource_version":"1"}"#,
    ];
    let idx = Index::new();
    for line in old {
        idx.apply(&serde_json::from_str(line).unwrap());
    }
    assert_eq!(idx.len(), 1);
    assert!(idx.signatures(&sum(1)).is_empty());
    let signed = serde_json::to_string(&IndexEvent::Signed {
        checksum: sum(1),
        key: sum(2),
        evidence: "{}".into(),
    })
    .unwrap();
    assert!(signed.contains(r#""op":"signed""#), "{signed}");
}

// ---- Model-based test -------------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    Advance(u64),
    /// The size is a function of the checksum, as it is for real content.
    Insert {
        url: usize,
        sum: u8,
    },
    Touch {
        url: usize,
        sum: u8,
    },
    Lookup {
        url: usize,
        sum: Option<u8>,
        rv: u8,
        policy: u8,
    },
    Record {
        url: usize,
        sum: u8,
        rv: u8,
    },
    Remove {
        url: usize,
        sum: u8,
    },
    Purge {
        expiry: u64,
    },
    Evict {
        budget: u64,
        grace: u64,
    },
    /// Evicts with a grace period of exactly the age of the `entry`-th entry
    /// (modulo their number): that entry is on the boundary and must stay.
    EvictAtBoundary {
        budget: u64,
        entry: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let u = 0..URLS.len();
    prop_oneof![
        (0u64..5_000).prop_map(Op::Advance),
        (u.clone(), 1u8..5).prop_map(|(url, sum)| Op::Insert { url, sum }),
        (u.clone(), 1u8..5).prop_map(|(url, sum)| Op::Touch { url, sum }),
        (u.clone(), proptest::option::of(1u8..5), 0u8..3, 0u8..3).prop_map(
            |(url, sum, rv, policy)| Op::Lookup {
                url,
                sum,
                rv,
                policy
            }
        ),
        (u.clone(), 1u8..5, 0u8..3).prop_map(|(url, sum, rv)| Op::Record { url, sum, rv }),
        (u, 1u8..5).prop_map(|(url, sum)| Op::Remove { url, sum }),
        (0u64..8_000).prop_map(|expiry| Op::Purge { expiry }),
        // Budgets across the whole range of totals (three contents of
        // 2,300 to 2,346 bytes), so that plans of every length come up.
        (0u64..7_200, 0u64..4_000).prop_map(|(budget, grace)| Op::Evict { budget, grace }),
        (0u64..7_200, 0usize..8).prop_map(|(budget, entry)| Op::EvictAtBoundary { budget, entry }),
    ]
}

/// The tiny reference model: ordered maps and the rules written out plainly.
#[derive(Default)]
struct Model {
    modules: BTreeMap<ModuleKey, (u64, u64, BTreeSet<String>)>,
    records: BTreeMap<String, (Sha256Digest, BTreeMap<String, String>)>,
}

impl Model {
    fn remove(&mut self, key: &ModuleKey) -> bool {
        let Some((_, _, urls)) = self.modules.remove(key) else {
            return false;
        };
        for u in urls {
            if self.records.get(&u).is_some_and(|r| r.0 == key.checksum) {
                self.records.remove(&u);
            }
        }
        true
    }

    fn lookup(
        &mut self,
        u: &ModuleUrl,
        checksum: Option<Sha256Digest>,
        rv: &str,
        policy: PullPolicy,
        now: u64,
    ) -> Lookup {
        let name = u.module_name();
        let pinned = checksum.or(u.pinned_digest());
        let mut chosen = pinned;
        if chosen.is_none()
            && !u.has_digest()
            && let Some((c, versions)) = self.records.get_mut(u.as_str())
        {
            let same = versions.get("r").map(String::as_str) == Some(rv);
            if policy.ignores_resource_version(u) || same {
                versions.insert("r".into(), rv.into());
                chosen = Some(*c);
            }
        }
        if let Some(c) = chosen {
            let key = ModuleKey::new(name.clone(), c);
            if let Some(m) = self.modules.get_mut(&key) {
                m.1 = m.1.max(now);
                return Lookup::Hit {
                    key,
                    content: content(c.as_bytes()[0]),
                };
            }
        }
        Lookup::Miss {
            name,
            expected: pinned,
        }
    }

    fn total(&self) -> u64 {
        let per_sum: BTreeMap<_, _> = self
            .modules
            .iter()
            .map(|(k, v)| (content(k.checksum.as_bytes()[0]), v.0))
            .collect();
        per_sum.values().sum()
    }
}

/// The content digest behind checksum `s`: several checksums share content,
/// as OCI manifests of one module pushed twice do.
fn content(s: u8) -> Sha256Digest {
    sum(100 + s % 3)
}

fn policy(p: u8) -> PullPolicy {
    [
        PullPolicy::Unspecified,
        PullPolicy::IfNotPresent,
        PullPolicy::Always,
    ][usize::from(p % 3)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn index_matches_the_model(ops in proptest::collection::vec(op(), 1..60)) {
        let idx = Index::new();
        let mut model = Model::default();
        let urls: Vec<ModuleUrl> = URLS.iter().map(|s| url(s)).collect();
        let mut now = 1_000u64;
        for op in ops {
            match op {
                Op::Advance(ms) => now += ms,
                Op::Insert { url: i, sum: s } => {
                    let size = u64::from(content(s).as_bytes()[0]) * 23;
                    let key = ModuleKey::new(urls[i].module_name(), sum(s));
                    let new = idx.insert(key.clone(), content(s), size, Some(urls[i].as_str()), Timestamp(now));
                    let m = model.modules.entry(key).or_insert((size, now, BTreeSet::new()));
                    prop_assert_eq!(new, m.2.is_empty() && m.1 == now && m.0 == size);
                    m.0 = size;
                    m.1 = m.1.max(now);
                    m.2.insert(urls[i].as_str().to_owned());
                }
                Op::Touch { url: i, sum: s } => {
                    let key = ModuleKey::new(urls[i].module_name(), sum(s));
                    let hit = model.modules.get_mut(&key).map(|m| m.1 = m.1.max(now)).is_some();
                    prop_assert_eq!(idx.touch(&key, Timestamp(now)).is_some(), hit);
                }
                Op::Lookup { url: i, sum: s, rv, policy: p } => {
                    let rv = rv.to_string();
                    let got = idx.lookup(&LookupRequest {
                        url: &urls[i], checksum: s.map(sum), resource_name: "r",
                        resource_version: &rv, policy: policy(p),
                    }, Timestamp(now));
                    prop_assert_eq!(got, model.lookup(&urls[i], s.map(sum), &rv, policy(p), now));
                }
                Op::Record { url: i, sum: s, rv } => {
                    let changed = idx.record_checksum(urls[i].as_str(), sum(s), "r", &rv.to_string());
                    let before = model.records.get(urls[i].as_str()).cloned();
                    let r = model.records.entry(urls[i].as_str().to_owned()).or_insert((sum(s), BTreeMap::new()));
                    r.0 = sum(s);
                    r.1.insert("r".into(), rv.to_string());
                    prop_assert_eq!(changed, before.as_ref() != Some(&*r));
                }
                Op::Remove { url: i, sum: s } => {
                    let key = ModuleKey::new(urls[i].module_name(), sum(s));
                    prop_assert_eq!(idx.remove(&key).is_some(), model.remove(&key));
                }
                Op::Purge { expiry } => {
                    let expiry_d = Duration::from_millis(expiry);
                    let want: Vec<ModuleKey> = model.modules.iter()
                        .filter(|(_, v)| now.saturating_sub(v.1) > expiry)
                        .map(|(k, _)| k.clone()).collect();
                    let got = idx.expired(Timestamp(now), expiry_d);
                    prop_assert_eq!(&got, &want);
                    for k in &got {
                        let removed = idx.remove_if_idle(k, Timestamp(now), expiry_d);
                        prop_assert!(removed.is_some());
                        // What went with it is exactly the records that pointed at it.
                        let want_records: Vec<Sha256Digest> = model.modules[k].2.iter()
                            .filter_map(|u| model.records.get(u)).map(|r| r.0)
                            .filter(|c| *c == k.checksum).collect();
                        let got_records: Vec<Sha256Digest> = removed.unwrap().records.iter().map(|(_, r)| r.checksum).collect();
                        prop_assert_eq!(got_records, want_records);
                        model.remove(k);
                    }
                    // Purge never removes an entry used within the expiry.
                    for e in idx.entries() {
                        prop_assert!(now.saturating_sub(e.last_use.0) <= expiry);
                    }
                }
                Op::Evict { .. } | Op::EvictAtBoundary { .. } => {
                    let (budget, grace, boundary) = match op {
                        Op::EvictAtBoundary { budget, entry } => {
                            let at = entry.checked_rem(model.modules.len()).and_then(|i| model.modules.iter().nth(i));
                            match at {
                                Some((k, m)) => (budget, now - m.1, Some(k.clone())),
                                None => (budget, 0, None),
                            }
                        }
                        Op::Evict { budget, grace } => (budget, grace, None),
                        _ => unreachable!("matched above"),
                    };
                    let grace_d = Duration::from_millis(grace);
                    let chosen = idx.select_lru(Timestamp(now), budget, grace_d);
                    let protected = |last: u64| now.saturating_sub(last) <= grace;
                    // The model's view of content: size, newest use, any protected entry, keys.
                    let mut groups: BTreeMap<Sha256Digest, (u64, u64, bool, BTreeSet<ModuleKey>)> = BTreeMap::new();
                    for (k, (size, last, _)) in &model.modules {
                        let g = groups.entry(content(k.checksum.as_bytes()[0])).or_default();
                        g.0 = *size;
                        g.1 = g.1.max(*last);
                        g.2 |= protected(*last);
                        g.3.insert(k.clone());
                    }
                    let group_of = |k: &ModuleKey| content(k.checksum.as_bytes()[0]);
                    let chosen_set: BTreeSet<ModuleKey> = chosen.iter().cloned().collect();
                    prop_assert_eq!(chosen_set.len(), chosen.len(), "a key picked twice");
                    let picked: BTreeSet<Sha256Digest> = chosen.iter().map(group_of).collect();
                    for c in &picked {
                        let g = &groups[c];
                        // Every pick frees bytes: its whole content goes, none of it protected.
                        prop_assert!(!g.2, "picked content a protected entry holds");
                        prop_assert!(g.0 > 0, "picked content that frees nothing");
                        prop_assert!(g.3.is_subset(&chosen_set), "picked part of a content only");
                    }
                    // The grace boundary: nothing used within the grace period
                    // (exactly `grace` ago included) goes.
                    for k in &chosen {
                        prop_assert!(!protected(model.modules[k].1), "evicted within grace");
                    }
                    if let Some(k) = &boundary {
                        prop_assert!(!chosen_set.contains(k), "evicted the entry used exactly grace ago");
                    }
                    // The whole plan: no smaller plan fits. Every set of the
                    // picked contents but the whole leaves the budget exceeded
                    // (at most three contents: eight sets).
                    let left = |gone: &BTreeSet<Sha256Digest>| -> u64 {
                        groups.iter().filter(|(c, _)| !gone.contains(c)).map(|(_, g)| g.0).sum()
                    };
                    let evictable: BTreeSet<Sha256Digest> = groups.iter().filter(|(_, g)| !g.2 && g.0 > 0).map(|(c, _)| *c).collect();
                    if left(&picked) <= budget {
                        let picks: Vec<Sha256Digest> = picked.iter().copied().collect();
                        for mask in 0u32..(1 << picks.len()) - 1 {
                            let subset: BTreeSet<Sha256Digest> = picks.iter().enumerate()
                                .filter(|(i, _)| mask & (1 << i) != 0).map(|(_, c)| *c).collect();
                            prop_assert!(left(&subset) > budget, "{:?} of {:?} would do", subset, picked);
                        }
                    } else {
                        prop_assert_eq!(&picked, &evictable, "over budget with evictable content left");
                    }
                    // Least recently used first: nothing newer than the
                    // shortest LRU prefix that fits goes.
                    let mut lru: Vec<(u64, Sha256Digest)> = evictable.iter().map(|c| (groups[c].1, *c)).collect();
                    lru.sort();
                    let mut prefix = BTreeSet::new();
                    for (_, c) in lru {
                        if left(&prefix) <= budget { break; }
                        prefix.insert(c);
                    }
                    prop_assert!(picked.is_subset(&prefix), "picked newer content than needed");
                    for k in &chosen {
                        prop_assert!(idx.remove(k).is_some());
                        model.remove(k);
                    }
                    // Within budget unless only protected or empty content remains.
                    let stuck = groups.iter().filter(|(c, _)| !picked.contains(c)).all(|(_, g)| g.2 || g.0 == 0);
                    prop_assert!(model.total() <= budget || stuck);
                    prop_assert_eq!(idx.total_bytes(), model.total());
                }
            }
            // Compare the whole state after every step.
            let entries: Vec<(ModuleKey, u64, u64, BTreeSet<String>)> = idx.entries().into_iter()
                .map(|e| { assert_eq!(e.content, content(e.key.checksum.as_bytes()[0])); (e.key, e.size, e.last_use.0, e.urls) }).collect();
            let want: Vec<(ModuleKey, u64, u64, BTreeSet<String>)> = model.modules.iter()
                .map(|(k, (s, l, u))| (k.clone(), *s, *l, u.clone())).collect();
            prop_assert_eq!(&entries, &want);
            // The borrowed references see the same entries, whole or
            // however they are cut in parts.
            let refs = idx.entry_refs();
            let mut visited: Vec<_> = refs.iter()
                .map(|e| (e.key.clone(), e.size, e.last_use.0, e.urls.iter().cloned().collect::<BTreeSet<String>>())).collect();
            visited.sort();
            prop_assert_eq!(&visited, &want);
            prop_assert_eq!(refs.len(), want.len());
            let mid = refs.len() / 2;
            let mut parts: Vec<_> = refs.range(0..mid).chain(refs.range(mid..refs.len()))
                .map(|e| (e.key.clone(), e.size, e.last_use.0, e.urls.iter().cloned().collect::<BTreeSet<String>>())).collect();
            parts.sort();
            prop_assert_eq!(parts, want);
            drop(refs);
            for u in URLS {
                let got = idx.checksum_record(u).map(|r| (r.checksum, r.resource_versions));
                prop_assert_eq!(got, model.records.get(u).cloned());
            }
        }
        // Replaying the events gives the same index.
        let replayed = Index::new();
        let owned = Index::new();
        for e in idx.to_events() { replayed.apply(&e); owned.apply_owned(e); }
        prop_assert_eq!(replayed.entries(), idx.entries());
        prop_assert_eq!(owned.entries(), idx.entries());
        for u in URLS {
            prop_assert_eq!(owned.checksum_record(u), idx.checksum_record(u));
        }
    }

    #[test]
    fn a_pinned_checksum_makes_the_policy_irrelevant(
        ops in proptest::collection::vec(op(), 0..30),
        i in 0..URLS.len(), s in 1u8..5, rv in 0u8..3,
    ) {
        let idx = Index::new();
        let urls: Vec<ModuleUrl> = URLS.iter().map(|s| url(s)).collect();
        for op in ops {
            match op {
                Op::Insert { url: i, sum: s } => {
                    idx.insert(ModuleKey::new(urls[i].module_name(), sum(s)), content(s), 23, Some(urls[i].as_str()), Timestamp(0));
                }
                Op::Record { url: i, sum: s, rv } => { idx.record_checksum(urls[i].as_str(), sum(s), "r", &rv.to_string()); }
                _ => {}
            }
        }
        let rv = rv.to_string();
        let answers: Vec<Lookup> = [0u8, 1, 2].iter().flat_map(|p| ["0", "1", rv.as_str()].map(|v| {
            idx.lookup(&LookupRequest { url: &urls[i], checksum: Some(sum(s)), resource_name: "r",
                resource_version: v, policy: policy(*p) }, Timestamp(0))
        })).collect();
        prop_assert!(answers.windows(2).all(|w| w[0] == w[1]), "{:?}", answers);
    }
}

/// The hand-written decoding reads what the derived encoding writes, in any
/// field order, ignores unknown fields, and names what is missing or wrong.
#[test]
fn events_decode_in_any_field_order_and_name_what_is_wrong() {
    let events = vec![
        IndexEvent::Insert {
            key: ModuleKey::new("https://h/m.wasm", sum(1)),
            content: sum(1),
            size: 3,
            url: Some("https://h/m.wasm".into()),
            at: Timestamp(9),
        },
        IndexEvent::Insert {
            key: ModuleKey::new("oci://r.io/x", sum(2)),
            content: sum(3),
            size: 4,
            url: None,
            at: Timestamp(10),
        },
        IndexEvent::Touch {
            key: ModuleKey::new("oci://r.io/x", sum(2)),
            at: Timestamp(11),
        },
        IndexEvent::Remove {
            key: ModuleKey::new("oci://r.io/x", sum(2)),
        },
        IndexEvent::Record {
            url: "oci://r.io/x:v1".into(),
            checksum: sum(2),
            resource_name: "ns/a".into(),
            resource_version: "7".into(),
        },
        IndexEvent::Signed {
            checksum: sum(2),
            key: sum(40),
            evidence: "e".into(),
        },
    ];
    for e in &events {
        let json = serde_json::to_string(e).unwrap();
        assert!(json.starts_with("{\"op\":"), "{json}");
        assert_eq!(&serde_json::from_str::<IndexEvent>(&json).unwrap(), e);
        // `op` last, and an unknown field: the same event.
        let mut v: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&json).unwrap();
        let op = v.remove("op").unwrap();
        v.insert("future".into(), serde_json::json!({"x": [1, 2]}));
        v.insert("op".into(), op);
        let reordered = serde_json::to_string(&v).unwrap();
        assert!(!reordered.starts_with("{\"op\":"), "{reordered}");
        assert_eq!(&serde_json::from_str::<IndexEvent>(&reordered).unwrap(), e);
    }
    let err = |s: &str| {
        serde_json::from_str::<IndexEvent>(s)
            .unwrap_err()
            .to_string()
    };
    assert!(err(r#"{"op":"explode"}"#).contains("explode"));
    assert!(err(r#"{"at":1}"#).contains("missing field `op`"));
    assert!(err(r#"{"op":"touch","at":1}"#).contains("missing field `key`"));
    assert!(err(r#"{"op":"remove"}"#).contains("missing field `key`"));
    let digest = sum(1).to_hex();
    assert!(
        err(&format!(r#"{{"op":"touch","key":"{digest}","at":1}}"#)).contains("module key")
            || err(&format!(r#"{{"op":"touch","key":"{digest}","at":1}}"#)).contains("expected")
    );
    assert!(
        err(r#"{"op":"signed","checksum":"nothex","key":"x","evidence":""}"#).contains("nothex")
    );
    assert!(err("[1,2]").contains("index event") || err("[1,2]").contains("map"));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// What the cache's hot records rely on: a hit found after reading
    /// `generation()` is still the answer while the generation is unchanged,
    /// whatever happened in between (touches, new entries, lookups).
    #[test]
    fn an_unchanged_generation_vouches_for_a_hit(ops in proptest::collection::vec(op(), 1..60)) {
        let idx = Index::new();
        let urls: Vec<ModuleUrl> = URLS.iter().map(|s| url(s)).collect();
        let mut now = 1_000u64;
        let mut memo: Vec<(usize, Option<u8>, String, u8, u64, Lookup)> = Vec::new();
        for op in ops {
            match op {
                Op::Advance(ms) => now += ms,
                Op::Insert { url: i, sum: s } => {
                    let size = u64::from(content(s).as_bytes()[0]) * 23;
                    let key = ModuleKey::new(urls[i].module_name(), sum(s));
                    idx.insert(key, content(s), size, Some(urls[i].as_str()), Timestamp(now));
                }
                Op::Touch { url: i, sum: s } => {
                    idx.touch(&ModuleKey::new(urls[i].module_name(), sum(s)), Timestamp(now));
                }
                Op::Lookup { url: i, sum: s, rv, policy: p } => {
                    let rv = rv.to_string();
                    let generation = idx.generation();
                    let got = idx.lookup(&req(&urls[i], s.map(sum), &rv, policy(p)), Timestamp(now));
                    if matches!(got, Lookup::Hit { .. }) {
                        memo.push((i, s, rv, p, generation, got));
                    }
                }
                Op::Record { url: i, sum: s, rv } => {
                    idx.record_checksum(urls[i].as_str(), sum(s), "ns/plugin", &rv.to_string());
                }
                Op::Remove { url: i, sum: s } => {
                    idx.remove(&ModuleKey::new(urls[i].module_name(), sum(s)));
                }
                Op::Purge { expiry } => {
                    let expiry = Duration::from_millis(expiry);
                    for k in idx.expired(Timestamp(now), expiry) {
                        idx.remove_if_idle(&k, Timestamp(now), expiry);
                    }
                }
                Op::Evict { budget, grace } => {
                    let grace = Duration::from_millis(grace);
                    for k in idx.select_lru(Timestamp(now), budget, grace) {
                        idx.remove_if_idle(&k, Timestamp(now), grace);
                    }
                }
                Op::EvictAtBoundary { .. } => {}
            }
            for (i, s, rv, p, generation, hit) in &memo {
                if *generation == idx.generation() {
                    let again = idx.lookup(&req(&urls[*i], s.map(sum), rv, policy(*p)), Timestamp(now));
                    prop_assert_eq!(&again, hit);
                }
            }
        }
    }
}

#[test]
fn touches_and_new_entries_leave_the_generation_alone() {
    let idx = Index::new();
    let u = url("http://a.example/m.wasm");
    let key = ModuleKey::new(u.module_name(), sum(1));
    idx.insert(key.clone(), sum(1), 10, Some(u.as_str()), Timestamp(1));
    idx.record_checksum(u.as_str(), sum(1), "ns/plugin", "1");
    let g = idx.generation();
    idx.touch(&key, Timestamp(5));
    idx.insert(key.clone(), sum(1), 10, Some(u.as_str()), Timestamp(6));
    idx.insert(
        ModuleKey::new(u.module_name(), sum(2)),
        sum(2),
        10,
        None,
        Timestamp(7),
    );
    assert!(!idx.record_checksum(u.as_str(), sum(1), "ns/plugin", "1"));
    assert!(matches!(
        idx.lookup(&req(&u, None, "1", PullPolicy::Unspecified), Timestamp(8)),
        Lookup::Hit { .. }
    ));
    assert_eq!(idx.generation(), g);
    idx.record_checksum(u.as_str(), sum(1), "ns/plugin", "2");
    assert_ne!(idx.generation(), g, "a changed record moves it");
    let g = idx.generation();
    idx.insert(key.clone(), sum(3), 10, None, Timestamp(9));
    assert_ne!(idx.generation(), g, "another content moves it");
    let g = idx.generation();
    idx.remove(&key);
    assert_ne!(idx.generation(), g, "a removal moves it");
}
