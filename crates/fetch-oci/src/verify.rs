//! Blob verification while streaming: sha256 and size against the descriptor.

use wasm_cache_core::{Error, Sha256Digest};

/// Hashes a blob as it streams and holds it to its descriptor: more bytes than
/// the descriptor's size fail at once; at the end, size and digest must match.
/// When the sink took on the digest check ([`BlobVerifier::hand_over`]), only
/// the size is checked here: the bytes are hashed once, by the sink.
pub(crate) struct BlobVerifier {
    ctx: Option<ring::digest::Context>,
    expected: Sha256Digest,
    size: u64,
    seen: u64,
    url: String,
}

impl BlobVerifier {
    pub(crate) fn new(expected: Sha256Digest, size: u64, url: String) -> Self {
        Self {
            ctx: Some(ring::digest::Context::new(&ring::digest::SHA256)),
            expected,
            size,
            seen: 0,
            url,
        }
    }

    /// Stops hashing: the caller's sink verifies the digest instead.
    pub(crate) fn hand_over(&mut self) {
        self.ctx = None;
    }

    fn mismatch(&self, actual: String) -> Error {
        Error::DigestMismatch {
            url: self.url.clone(),
            expected: format!("{} ({} bytes)", self.expected.to_prefixed(), self.size),
            actual,
        }
    }

    /// Takes the next chunk.
    ///
    /// # Errors
    /// [`Error::DigestMismatch`] as soon as the blob is longer than its descriptor says.
    pub(crate) fn update(&mut self, chunk: &[u8]) -> Result<(), Error> {
        self.seen = self.seen.saturating_add(chunk.len() as u64);
        if self.seen > self.size {
            return Err(self.mismatch(format!(
                "a blob longer than its descriptor's {} bytes",
                self.size
            )));
        }
        if let Some(ctx) = &mut self.ctx {
            ctx.update(chunk);
        }
        Ok(())
    }

    /// Checks the whole blob.
    ///
    /// # Errors
    /// [`Error::DigestMismatch`] if the size or the digest differs.
    pub(crate) fn finish(self) -> Result<(), Error> {
        if self.seen != self.size {
            return Err(self.mismatch(format!("a blob of {} bytes", self.seen)));
        }
        let Some(ctx) = self.ctx.clone() else {
            return Ok(());
        };
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        let actual = Sha256Digest::from_bytes(out);
        if actual != self.expected {
            return Err(self.mismatch(actual.to_prefixed()));
        }
        Ok(())
    }
}

/// The sha256 of `bytes`.
pub(crate) fn sha256(bytes: &[u8]) -> Sha256Digest {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
    Sha256Digest::from_bytes(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifies_size_and_digest() {
        let blob = b"hello blob";
        let d = sha256(blob);
        let mut v = BlobVerifier::new(d, 10, "u".into());
        v.update(&blob[..4]).unwrap();
        v.update(&blob[4..]).unwrap();
        v.finish().unwrap();

        let mut v = BlobVerifier::new(d, 10, "u".into());
        v.update(b"hello blob").unwrap();
        let e = v.update(b"!").unwrap_err();
        assert!(e.to_string().contains("longer than"), "{e}");

        let mut v = BlobVerifier::new(d, 10, "u".into());
        v.update(b"hello blub").unwrap();
        assert!(matches!(v.finish(), Err(Error::DigestMismatch { .. })));

        let mut v = BlobVerifier::new(d, 10, "u".into());
        v.update(b"hello").unwrap();
        assert!(
            v.finish()
                .unwrap_err()
                .to_string()
                .contains("a blob of 5 bytes")
        );
    }
}
