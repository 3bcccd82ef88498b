//! The validated SHA-256 digest type.

use std::fmt;
use std::str::FromStr;

use crate::Error;

/// A SHA-256 digest: exactly 32 bytes, printed as 64 lowercase hex characters.
///
/// This is the only way a checksum becomes part of a file name (`<hex>.wasm`):
/// parsing accepts exactly 64 lowercase hex characters, optionally prefixed with
/// `sha256:`, and rejects everything else, so a checksum can never smuggle a path
/// separator, a `..` or an upper-case twin of another file name into the store.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256Digest([u8; 32]);

/// The `sha256:` prefix of an OCI digest.
pub const SHA256_PREFIX: &str = "sha256:";

impl Sha256Digest {
    /// Wraps 32 raw digest bytes (for example the output of a hasher).
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The 32 raw bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Parses 64 lowercase hex characters, with or without a `sha256:` prefix.
    ///
    /// # Errors
    /// [`Error::InvalidChecksum`] naming what is wrong (length, character, case).
    pub fn parse(input: &str) -> Result<Self, Error> {
        let hex = input.strip_prefix(SHA256_PREFIX).unwrap_or(input);
        let invalid = |reason: String| Error::InvalidChecksum {
            // Short messages even when someone passes a megabyte as a checksum.
            input: crate::error::shorten(input, 80),
            reason,
        };
        if hex.len() != 64 {
            return Err(invalid(format!(
                "expected 64 lowercase hex characters, got {}",
                hex.chars().count()
            )));
        }
        let mut out = [0u8; 32];
        let bytes = hex.as_bytes();
        // The common case, branch-free: every journal replay parses a few
        // digests per module. Any bad character sets the high bit of `bad`;
        // the loop below then finds and names it.
        let mut bad = 0u8;
        for (i, slot) in out.iter_mut().enumerate() {
            let hi = HEX_VALUE[usize::from(bytes[2 * i])];
            let lo = HEX_VALUE[usize::from(bytes[2 * i + 1])];
            bad |= hi | lo;
            *slot = (hi << 4) | (lo & 0x0f);
        }
        if bad & 0x80 == 0 {
            return Ok(Self(out));
        }
        for (i, slot) in out.iter_mut().enumerate() {
            let hi = nibble(bytes[2 * i]);
            let lo = nibble(bytes[2 * i + 1]);
            match (hi, lo) {
                (Some(h), Some(l)) => *slot = (h << 4) | l,
                _ => {
                    let pos = if hi.is_none() { 2 * i } else { 2 * i + 1 };
                    let c = hex[pos..].chars().next().unwrap_or('?');
                    let what = if c.is_ascii_uppercase() {
                        "upper-case hex is not accepted"
                    } else {
                        "not a hex digit"
                    };
                    return Err(invalid(format!("character {c:?} at {pos}: {what}")));
                }
            }
        }
        Ok(Self(out))
    }

    /// The digest as 64 lowercase hex characters.
    pub fn to_hex(&self) -> String {
        self.to_string()
    }

    /// The digest in OCI form, `sha256:<hex>`.
    pub fn to_prefixed(&self) -> String {
        format!("{SHA256_PREFIX}{self}")
    }

    /// The module's file name in the store, `<hex>.wasm`.
    pub fn file_name(&self) -> String {
        format!("{self}.wasm")
    }

    /// [`Sha256Digest::file_name`] as ASCII bytes on the stack, for hot paths
    /// that must not allocate.
    pub fn file_name_bytes(&self) -> [u8; 69] {
        let mut out = [0u8; 69];
        out[..64].copy_from_slice(&self.hex_bytes());
        out[64..].copy_from_slice(b".wasm");
        out
    }

    fn hex_bytes(&self) -> [u8; 64] {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut buf = [0u8; 64];
        for (i, b) in self.0.iter().enumerate() {
            buf[2 * i] = HEX[usize::from(b >> 4)];
            buf[2 * i + 1] = HEX[usize::from(b & 0x0f)];
        }
        buf
    }
}

/// The value of each lowercase hex digit; 0x80 for every other byte.
static HEX_VALUE: [u8; 256] = {
    let mut t = [0x80u8; 256];
    let mut c = 0;
    while c < 10 {
        t[b'0' as usize + c] = c as u8;
        c += 1;
    }
    let mut c = 0;
    while c < 6 {
        t[b'a' as usize + c] = 10 + c as u8;
        c += 1;
    }
    t
};

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let buf = self.hex_bytes();
        // The buffer holds only ASCII hex digits.
        f.write_str(std::str::from_utf8(&buf).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{self}")
    }
}

impl FromStr for Sha256Digest {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl serde::Serialize for Sha256Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Sha256Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A visitor rather than `Cow<str>` (whose `Deserialize` always
        // allocates a `String`): a journal replay decodes three digests per
        // module, borrowed from the line.
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Sha256Digest;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a sha256 digest (64 lowercase hex characters)")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Sha256Digest, E> {
                Sha256Digest::parse(s).map_err(E::custom)
            }
        }
        d.deserialize_str(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_bare_and_prefixed() {
        let a = Sha256Digest::parse(EMPTY).unwrap();
        let b = Sha256Digest::parse(&format!("sha256:{EMPTY}")).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.to_string(), EMPTY);
        assert_eq!(a.to_prefixed(), format!("sha256:{EMPTY}"));
        assert_eq!(a.file_name(), format!("{EMPTY}.wasm"));
    }

    #[test]
    fn rejects_with_clear_reasons() {
        let upper = EMPTY.to_uppercase();
        let cases = [
            ("", "got 0"),
            ("abc", "got 3"),
            (upper.as_str(), "upper-case"),
            ("sha512:abcd", "got 11"),
            (&format!("{}g", &EMPTY[..63]), "'g' at 63"),
            (
                "../../../../../../../../../../../../../../../../../../../../etc/pass",
                "got 68",
            ),
        ];
        for (input, want) in cases {
            let err = Sha256Digest::parse(input).unwrap_err().to_string();
            assert!(err.contains(want), "{input:?}: {err}");
            assert!(err.starts_with("invalid sha256 checksum"), "{err}");
        }
    }

    #[test]
    fn long_input_is_shortened_in_errors() {
        let err = Sha256Digest::parse(&"x".repeat(10_000))
            .unwrap_err()
            .to_string();
        assert!(err.len() < 200, "{err}");
    }

    #[test]
    fn serde_round_trip() {
        let d = Sha256Digest::parse(EMPTY).unwrap();
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(json, format!("\"{EMPTY}\""));
        assert_eq!(serde_json::from_str::<Sha256Digest>(&json).unwrap(), d);
        assert!(serde_json::from_str::<Sha256Digest>("\"nope\"").is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn print_parse_round_trip(bytes in any::<[u8; 32]>()) {
            let d = Sha256Digest::from_bytes(bytes);
            prop_assert_eq!(Sha256Digest::parse(&d.to_string()).unwrap(), d);
            prop_assert_eq!(Sha256Digest::parse(&d.to_prefixed()).unwrap(), d);
            prop_assert_eq!(d.to_string().len(), 64);
            let name = d.file_name();
            prop_assert_eq!(&d.file_name_bytes()[..], name.as_bytes());
        }

        #[test]
        fn anything_parsed_is_a_safe_file_name(s in "\\PC{0,80}") {
            if let Ok(d) = Sha256Digest::parse(&s) {
                let name = d.file_name();
                prop_assert!(name.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase() || b == b'.'));
                prop_assert_eq!(name.len(), 69);
            }
        }
    }
}
