//! Unit and property tests of the unboxer (all layers together).

use std::io::Write;

use proptest::prelude::*;
use wasm_cache_core::{Error, ModuleSink, ModuleUrl, check_wasm_header};

use super::*;
use crate::tar::{parse_number, pax_path};

#[test]
fn compressors_that_expand_incompressible_modules_are_accepted() {
    // 24 MiB of pseudo-random bytes: zlib-rs at level 1 makes them 5.5%
    // larger, more than ARCHIVE_OVERHEAD, and still well within boxed_limit.
    let mut module = b"\0asm\x01\0\0\0".to_vec();
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    while module.len() < 24 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        module.extend_from_slice(&x.to_le_bytes());
    }
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(&module).unwrap();
    let gz = enc.finish().unwrap();
    let max = module.len() as u64;
    assert!(
        gz.len() as u64 > max + ARCHIVE_OVERHEAD,
        "the case this test is about"
    );
    assert!((gz.len() as u64) <= boxed_limit(max));
    let mut u = Unboxer::new(Vec::new(), max, TarEntryRule::PluginWasmOrFirstWasm);
    for chunk in gz.chunks(64 * 1024) {
        u.push(chunk).unwrap();
    }
    let (out, n) = u.finish().unwrap();
    assert_eq!(n, max);
    assert!(out == module);
    // One byte less of room is still an error, not a truncation.
    let mut u = Unboxer::new(Vec::new(), max - 1, TarEntryRule::PluginWasmOrFirstWasm);
    let err = gz
        .chunks(64 * 1024)
        .try_for_each(|c| u.push(c))
        .unwrap_err();
    assert!(
        matches!(err, UnboxError::TooLarge { limit } if limit == max - 1),
        "{err}"
    );
}

fn module(n: usize, seed: u8) -> Vec<u8> {
    let mut m = b"\0asm\x01\0\0\0".to_vec();
    let mut x = u32::from(seed).wrapping_mul(2_654_435_761).wrapping_add(1);
    while m.len() < n {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        m.push(x.to_le_bytes()[0]);
    }
    m
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// A hand-written tar: ustar headers, optional GNU long names and pax paths.
#[derive(Default)]
struct Tar(Vec<u8>);

impl Tar {
    fn header(&mut self, name: &[u8], size: usize, typeflag: u8, gnu: bool) {
        let mut h = [0u8; BLOCK];
        let n = name.len().min(100);
        h[..n].copy_from_slice(&name[..n]);
        h[100..108].copy_from_slice(b"0000644\0");
        h[108..116].copy_from_slice(b"0000000\0");
        h[116..124].copy_from_slice(b"0000000\0");
        if size < 1 << 33 {
            h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
        } else {
            // GNU base-256 for sizes octal cannot hold.
            h[124] = 0x80;
            h[128..136].copy_from_slice(&(size as u64).to_be_bytes());
        }
        h[136..148].copy_from_slice(b"00000000000\0");
        h[156] = typeflag;
        if gnu {
            h[257..265].copy_from_slice(b"ustar  \0");
        } else {
            h[257..265].copy_from_slice(b"ustar\x0000");
        }
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        self.0.extend_from_slice(&h);
    }

    fn data(&mut self, content: &[u8]) {
        self.0.extend_from_slice(content);
        let pad = (BLOCK - content.len() % BLOCK) % BLOCK;
        self.0.extend(std::iter::repeat_n(0, pad));
    }

    fn file(mut self, name: &str, content: &[u8]) -> Self {
        self.header(name.as_bytes(), content.len(), b'0', false);
        self.data(content);
        self
    }

    fn entry(mut self, name: &str, typeflag: u8, content: &[u8]) -> Self {
        self.header(name.as_bytes(), content.len(), typeflag, false);
        self.data(content);
        self
    }

    fn gnu_long(mut self, name: &str, content: &[u8]) -> Self {
        let mut long = name.as_bytes().to_vec();
        long.push(0);
        self.header(b"././@LongLink", long.len(), b'L', true);
        self.data(&long);
        self.header(
            &name.as_bytes()[..name.len().min(100)],
            content.len(),
            b'0',
            true,
        );
        self.data(content);
        self
    }

    fn pax(mut self, name: &str, content: &[u8]) -> Self {
        let body = format!(" path={name}\n");
        let mut len = body.len() + 1;
        while format!("{len}{body}").len() != len {
            len += 1;
        }
        let record = format!("{len}{body}");
        self.header(b"PaxHeaders/x", record.len(), b'x', false);
        self.data(record.as_bytes());
        self.header(b"truncated-name", content.len(), b'0', false);
        self.data(content);
        self
    }

    fn end(mut self) -> Vec<u8> {
        self.0.extend(std::iter::repeat_n(0, 2 * BLOCK));
        self.0
    }
}

fn unbox_chunks(
    body: &[u8],
    chunks: &[usize],
    max: u64,
    rule: TarEntryRule,
) -> Result<Vec<u8>, UnboxError> {
    let mut u = Unboxer::new(Vec::new(), max, rule);
    let mut rest = body;
    let mut i = 0;
    while !rest.is_empty() {
        let n = if chunks.is_empty() {
            rest.len()
        } else {
            chunks[i % chunks.len()].clamp(1, rest.len())
        };
        i += 1;
        u.push(&rest[..n])?;
        rest = &rest[n..];
    }
    let (out, n) = u.finish()?;
    assert_eq!(n, out.len() as u64);
    Ok(out)
}

fn unbox(body: &[u8], rule: TarEntryRule) -> Result<Vec<u8>, UnboxError> {
    unbox_chunks(body, &[], 1 << 30, rule)
}

const ANY: TarEntryRule = TarEntryRule::PluginWasmOrFirstWasm;
const PLUGIN: TarEntryRule = TarEntryRule::PluginWasm;

fn reason(e: UnboxError) -> String {
    match e {
        UnboxError::Invalid { reason } => reason,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn every_box_gives_the_module() {
    let m = module(3000, 1);
    let tar = Tar::default().file("plugin.wasm", &m).end();
    for body in [m.clone(), gzip(&m), tar.clone(), gzip(&tar)] {
        assert_eq!(unbox(&body, ANY).unwrap(), m);
        assert_eq!(unbox(&body, PLUGIN).unwrap(), m);
    }
}

#[test]
fn tar_entry_selection() {
    let m = module(700, 2);
    let other = module(600, 3);
    // Named plugin.wasm anywhere in the tree, after non-Wasm entries and a directory.
    let t = Tar::default()
        .file("README", b"hello")
        .entry("dir/", b'5', b"")
        .file("../../etc/x/plugin.wasm", &m)
        .file("plugin.wasm", &other)
        .end();
    assert_eq!(unbox(&t, PLUGIN).unwrap(), m);
    assert_eq!(unbox(&t, ANY).unwrap(), m);
    // First Wasm by content wins for HTTP; image layers want the name.
    let t = Tar::default()
        .file("a.bin", &other)
        .file("plugin.wasm", &m)
        .end();
    assert_eq!(unbox(&t, ANY).unwrap(), other);
    assert_eq!(unbox(&t, PLUGIN).unwrap(), m);
    // Only non-Wasm content and other names.
    let t = Tar::default().file("a.wasm", b"not wasm at all").end();
    assert!(reason(unbox(&t, ANY).unwrap_err()).contains("no regular file named plugin.wasm"));
    let t = Tar::default().file("a.wasm", &m).end();
    assert!(reason(unbox(&t, PLUGIN).unwrap_err()).contains("plugin.wasm"));
    // A symlink named plugin.wasm is not a regular file.
    let t = Tar::default()
        .entry("plugin.wasm", b'2', b"")
        .file("x", b"zz")
        .end();
    assert!(unbox(&t, PLUGIN).is_err());
    // Tiny entries cannot match by content.
    let t = Tar::default().file("a", b"\0as").file("b", &m).end();
    assert_eq!(unbox(&t, ANY).unwrap(), m);
}

#[test]
fn long_names_and_pax() {
    let m = module(900, 4);
    let deep = format!("{}/plugin.wasm", "d".repeat(150));
    let t = Tar::default().gnu_long(&deep, &m).end();
    assert_eq!(unbox(&t, PLUGIN).unwrap(), m);
    let t = Tar::default().pax(&deep, &m).end();
    assert_eq!(unbox(&t, PLUGIN).unwrap(), m);
    // A long name applies to one entry only.
    let t = Tar::default()
        .gnu_long(&format!("{}/x", "d".repeat(150)), b"nope")
        .file("plugin.wasm", &m)
        .end();
    assert_eq!(unbox(&t, PLUGIN).unwrap(), m);
    // An oversized long-name header is refused without allocating its size.
    let mut t = Tar::default();
    t.header(b"././@LongLink", 1 << 40, b'L', true);
    let e = unbox(&t.0, PLUGIN).unwrap_err();
    assert!(reason(e).contains("GNU long name of 1099511627776 bytes"));
}

#[test]
fn huge_declared_sizes_are_counted_not_allocated() {
    let mut t = Tar::default();
    t.header(b"big", 1 << 40, b'0', false);
    t.0.extend_from_slice(&[7u8; 4096]);
    let e = unbox(&t.0, ANY).unwrap_err();
    assert!(reason(e).contains("truncated tar entry"));
}

#[test]
fn errors_name_what_is_wrong() {
    let e = reason(unbox(b"", ANY).unwrap_err());
    assert_eq!(e, "body is empty");
    let e = reason(unbox(b"<html>hello</html>", ANY).unwrap_err());
    assert!(e.starts_with("not Wasm, gzip or tar (first bytes"), "{e}");
    let e = reason(unbox(b"\0asm", ANY).unwrap_err());
    assert!(e.contains("shorter than the 8-byte Wasm header"), "{e}");
    let e = reason(unbox(b"\0as", ANY).unwrap_err());
    assert!(e.contains("shorter"), "{e}");
    let e = reason(unbox(b"\0asm\x02\0\0\0xxxx", ANY).unwrap_err());
    assert!(e.contains("version"), "{e}");
    let e = reason(unbox(&gzip(b"plain text, not wasm"), ANY).unwrap_err());
    assert!(e.starts_with("not Wasm or tar inside gzip"), "{e}");
    let e = reason(unbox(&gzip(&gzip(&module(100, 1))), ANY).unwrap_err());
    assert!(e.contains("gzip inside gzip"), "{e}");
    let e = reason(unbox(&gzip(b""), ANY).unwrap_err());
    assert_eq!(e, "gzip content is empty");
    let gz = gzip(&module(5000, 5));
    let e = reason(unbox(&gz[..gz.len() - 3], ANY).unwrap_err());
    assert!(e.contains("truncated gzip"), "{e}");
    let e = reason(unbox(&gz[..5], ANY).unwrap_err());
    assert_eq!(e, "truncated gzip header");
    let mut bad = gz.clone();
    let n = bad.len();
    bad[n - 6] ^= 0xff; // CRC byte
    let e = reason(unbox(&bad, ANY).unwrap_err());
    assert!(e.contains("CRC-32 mismatch"), "{e}");
    let mut trailing = gz.clone();
    trailing.extend_from_slice(b"garbage!!!");
    let e = reason(unbox(&trailing, ANY).unwrap_err());
    assert!(e.contains("trailing data after the gzip stream"), "{e}");
    let t = Tar::default().file("plugin.wasm", &module(2000, 6)).end();
    let e = reason(unbox(&t[..1500], ANY).unwrap_err());
    assert_eq!(e, "truncated tar entry");
    let mut t2 = t.clone();
    t2[0] ^= 1; // the first header's name, so its checksum no longer matches
    let e = reason(unbox(&t2, ANY).unwrap_err());
    assert!(e.contains("checksum mismatch"), "{e}");
}

#[test]
fn multi_member_gzip_and_gzip_header_fields() {
    let m = module(4000, 7);
    let mut two = gzip(&m[..1000]);
    two.extend(gzip(&m[1000..]));
    assert_eq!(unbox(&two, ANY).unwrap(), m);
    let mut e = flate2::GzBuilder::new()
        .filename("plugin.wasm")
        .comment("a comment")
        .extra(vec![1, 2, 3, 4])
        .write(Vec::new(), flate2::Compression::best());
    e.write_all(&m).unwrap();
    let gz = e.finish().unwrap();
    assert_eq!(unbox_chunks(&gz, &[1], 1 << 20, ANY).unwrap(), m);
}

#[test]
fn size_limit_is_exact() {
    let m = module(10_000, 8);
    let tgz = gzip(&Tar::default().file("plugin.wasm", &m).end());
    for body in [m.clone(), gzip(&m), tgz] {
        assert_eq!(unbox_chunks(&body, &[333], 10_000, ANY).unwrap(), m);
        let e = unbox_chunks(&body, &[333], 9_999, ANY).unwrap_err();
        assert!(matches!(e, UnboxError::TooLarge { limit: 9_999 }), "{e:?}");
    }
}

#[test]
fn a_gzip_bomb_is_bounded() {
    // 64 MiB of zeros after a Wasm header compresses to ~64 KiB.
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(b"\0asm\x01\0\0\0").unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..64 {
        enc.write_all(&zeros).unwrap();
    }
    let bomb = enc.finish().unwrap();
    assert!(bomb.len() < 1 << 20);
    let mut sink = Vec::new();
    let mut u = Unboxer::new(&mut sink, 1 << 20, ANY);
    let e = bomb.chunks(8192).try_for_each(|c| u.push(c)).unwrap_err();
    assert!(matches!(e, UnboxError::TooLarge { limit } if limit == 1 << 20));
    assert!(sink.len() <= 1 << 20);

    // A bomb in a skipped tar entry is bounded by the archive overhead.
    let mut t = Tar::default();
    t.header(b"junk", 64 << 20, b'0', false);
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(&t.0).unwrap();
    for _ in 0..64 {
        enc.write_all(&zeros).unwrap();
    }
    let bomb = enc.finish().unwrap();
    let e = unbox_chunks(&bomb, &[8192], 1 << 20, ANY).unwrap_err();
    assert!(matches!(e, UnboxError::TooLarge { .. }), "{e:?}");
}

#[test]
fn sink_errors_and_poisoning() {
    struct Full;
    impl ModuleSink for Full {
        fn write(&mut self, _: &[u8]) -> std::io::Result<()> {
            Err(std::io::Error::other("disk full"))
        }
    }
    let mut u = Unboxer::new(Full, 1 << 20, ANY);
    let e = u.push(&module(100, 9)).unwrap_err();
    assert!(matches!(e, UnboxError::Sink(_)));
    let url = ModuleUrl::parse("https://u:pw@h.example/m.wasm?sig=x").unwrap();
    let err = e.into_error(&url);
    assert!(matches!(err, Error::Sink { .. }));
    assert!(!err.to_string().contains("pw"), "{err}");
    assert!(u.push(b"more").is_err());
    assert!(u.finish().is_err());
    let err = UnboxError::TooLarge { limit: 5 }.into_error(&url);
    assert_eq!(
        err.to_string(),
        "module from https://***@h.example/m.wasm?*** exceeds the size limit of 5 bytes"
    );
}

#[test]
fn output_chunks_are_bounded() {
    struct Chunks(usize, u64);
    impl ModuleSink for Chunks {
        fn write(&mut self, c: &[u8]) -> std::io::Result<()> {
            self.0 = self.0.max(c.len());
            self.1 += c.len() as u64;
            Ok(())
        }
    }
    let m = module(3 << 20, 10);
    let mut u = Unboxer::new(Chunks(0, 0), 1 << 30, ANY);
    u.push(&m).unwrap();
    let (c, n) = u.finish().unwrap();
    assert!(c.0 <= MAX_OUTPUT_CHUNK);
    assert_eq!(c.1, n);
    assert_eq!(n, m.len() as u64);
}

#[test]
fn announced_length_reaches_the_sink_only_for_plain_wasm() {
    struct Hinted(Option<u64>);
    impl ModuleSink for Hinted {
        fn write(&mut self, _: &[u8]) -> std::io::Result<()> {
            Ok(())
        }
        fn size_hint(&mut self, len: u64) {
            self.0 = Some(len);
        }
    }
    let m = module(5000, 11);
    let mut u = Unboxer::new(Hinted(None), 1 << 30, ANY);
    u.announce_len(Some(m.len() as u64));
    u.push(&m[..3]).unwrap();
    u.push(&m[3..]).unwrap();
    assert_eq!(u.finish().unwrap().0.0, Some(5000));
    // gzip: the body's length is not the module's.
    let z = gzip(&m);
    let mut u = Unboxer::new(Hinted(None), 1 << 30, ANY);
    u.announce_len(Some(z.len() as u64));
    u.push(&z).unwrap();
    assert_eq!(u.finish().unwrap().0.0, None);
}

#[test]
fn numbers() {
    assert_eq!(parse_number(b"0000644\0").unwrap(), 0o644);
    assert_eq!(parse_number(b"  12 \0").unwrap(), 0o12);
    assert_eq!(parse_number(b"\0\0\0").unwrap(), 0);
    assert_eq!(parse_number(&[0x80, 0, 0, 1, 0]).unwrap(), 256);
    assert!(parse_number(b"0009").is_err());
    assert!(parse_number(&[0xc0, 0]).is_err());
    assert!(parse_number(&[0x80, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
    assert_eq!(
        pax_path(b"30 mtime=1350244992.023960108\n22 path=a/plugin.wasm\n"),
        Some(&b"a/plugin.wasm"[..])
    );
    assert_eq!(pax_path(b"garbage"), None);
}

fn boxed(m: &[u8], which: u8) -> Vec<u8> {
    match which % 6 {
        0 => m.to_vec(),
        1 => gzip(m),
        2 => Tar::default().file("x/plugin.wasm", m).end(),
        3 => gzip(&Tar::default().file("a", b"skip me").file("m.wasm", m).end()),
        4 => Tar::default()
            .gnu_long(&format!("{}/plugin.wasm", "p".repeat(120)), m)
            .end(),
        _ => gzip(&Tar::default().pax(&"q/".repeat(80), m).end()),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn chunk_splits_do_not_matter(
        size in 8usize..20_000,
        seed in any::<u8>(),
        which in any::<u8>(),
        chunks in proptest::collection::vec(1usize..3000, 0..8),
    ) {
        let m = module(size, seed);
        let body = boxed(&m, which);
        prop_assert_eq!(unbox_chunks(&body, &chunks, 1 << 20, ANY).unwrap(), m);
    }

    #[test]
    fn garbage_never_panics(
        body in proptest::collection::vec(any::<u8>(), 0..4000),
        chunks in proptest::collection::vec(1usize..600, 0..5),
        max in 0u64..5000,
    ) {
        let _ = unbox_chunks(&body, &chunks, max, ANY);
        let _ = unbox_chunks(&body, &chunks, max, PLUGIN);
    }

    #[test]
    fn corrupted_boxes_never_panic_nor_overflow(
        seed in any::<u8>(),
        which in any::<u8>(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        chunks in proptest::collection::vec(1usize..900, 0..5),
        max in 8u64..3000,
    ) {
        let m = module(2500, seed);
        let mut body = boxed(&m, which);
        for (i, x) in flips {
            let i = i.index(body.len());
            body[i] ^= x;
        }
        let mut sink = Vec::new();
        let mut u = Unboxer::new(&mut sink, max, ANY);
        let mut ok = true;
        for c in body.chunks(chunks.first().copied().unwrap_or(body.len().max(1))) {
            if u.push(c).is_err() { ok = false; break; }
        }
        if ok { let _ = u.finish(); }
        prop_assert!(sink.len() as u64 <= max);
        if !sink.is_empty() {
            prop_assert!(check_wasm_header(&sink).is_ok() || sink.len() < 8);
        }
    }
}

#[test]
fn gzip_header_fields_are_bounded_and_truncations_named() {
    // A name field that never ends: flate2 caps it at 64 KiB, nothing grows
    // with what the body declares.
    let mut body = vec![0x1f, 0x8b, 8, 0x08, 0, 0, 0, 0, 0, 0xff];
    body.extend(std::iter::repeat_n(b'n', 200 * 1024));
    let e = reason(unbox_chunks(&body, &[4096], 1 << 20, ANY).unwrap_err());
    assert!(e.contains("gzip header"), "{e}");
    // Cut inside the trailer, byte by byte: still a truncation, not a CRC error.
    let gz = gzip(&module(3000, 12));
    for cut in 1..=8 {
        let e = reason(unbox_chunks(&gz[..gz.len() - cut], &[7], 1 << 20, ANY).unwrap_err());
        assert_eq!(e, "truncated gzip stream", "cut {cut}");
    }
    // A second member cut in its header.
    let mut two = gz.clone();
    two.extend_from_slice(&gz[..4]);
    let e = reason(unbox(&two, ANY).unwrap_err());
    assert_eq!(e, "truncated gzip header");
}
