//! Sample Wasm modules and the boxes they travel in (gzip, tar, tar.gz).

use std::io::Write;

/// A valid-looking Wasm module of exactly `size` bytes (at least 8): the 8-byte
/// header, then a deterministic byte pattern derived from `seed`, so different
/// seeds give different checksums.
pub fn sample_module(size: usize, seed: u64) -> Vec<u8> {
    assert!(size >= 8, "a Wasm module has at least its 8-byte header");
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(b"\0asm\x01\0\0\0");
    let mut x = seed ^ 0x9e37_79b9_7f4a_7c15;
    while out.len() < size {
        // xorshift64*: cheap, deterministic, incompressible enough for tests.
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let v = x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
        let n = (size - out.len()).min(8);
        out.extend_from_slice(&v[..n]);
    }
    out
}

/// The sha256 of `bytes`, as 64 lowercase hex characters.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// `bytes` gzip-compressed.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    gzip_level(bytes, 1)
}

/// `bytes` gzip-compressed at `level` (0-9). Level 6 is the default of
/// `gzip`, Go's `compress/gzip` (docker, buildkit) and zlib: on
/// incompressible data they all write stored blocks, while zlib-rs' level 1
/// (its "quick" strategy) always Huffman-codes literals, which makes the
/// stream about 5% larger and several times slower to inflate.
pub fn gzip_level(bytes: &[u8], level: u32) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
    enc.write_all(bytes).expect("writing to a Vec cannot fail");
    enc.finish().expect("writing to a Vec cannot fail")
}

/// A tar archive holding `entries` (name, content) in order.
pub fn tar(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, content) in entries {
        let mut h = tar::Header::new_ustar();
        h.set_size(content.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_path(name)
            .expect("test entry names are valid tar paths");
        h.set_cksum();
        b.append(&h, *content)
            .expect("writing to a Vec cannot fail");
    }
    b.into_inner().expect("writing to a Vec cannot fail")
}

/// A tar.gz holding `module` as `plugin.wasm` (the Docker/OCI image layer layout).
pub fn plugin_tar_gz(module: &[u8]) -> Vec<u8> {
    gzip(&tar(&[("plugin.wasm", module)]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_are_deterministic_and_distinct() {
        let a = sample_module(1000, 1);
        assert_eq!(a.len(), 1000);
        assert_eq!(&a[..8], b"\0asm\x01\0\0\0");
        assert_eq!(a, sample_module(1000, 1));
        assert_ne!(sha256_hex(&a), sha256_hex(&sample_module(1000, 2)));
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn boxes_round_trip() {
        use std::io::Read;
        let m = sample_module(5000, 3);
        let tgz = plugin_tar_gz(&m);
        let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(&tgz[..]));
        let mut e = ar.entries().unwrap().next().unwrap().unwrap();
        assert_eq!(e.path().unwrap().to_str(), Some("plugin.wasm"));
        let mut got = Vec::new();
        e.read_to_end(&mut got).unwrap();
        assert_eq!(got, m);
    }
}
