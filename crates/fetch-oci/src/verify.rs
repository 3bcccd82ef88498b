//! Blob verification while streaming: sha256 and size against the descriptor.

use bytes::Bytes;
use wasm_cache_core::{Error, Sha256Digest};

/// Hashes a blob as it streams and holds it to its descriptor: more bytes than
/// the descriptor's size fail at once; at the end, size and digest must match.
/// When the sink took on the digest check ([`BlobVerifier::hand_over`]), only
/// the size is checked here: the bytes are hashed once, by the sink.
///
/// A blob of [`THREAD_MIN`] bytes or more (a tar+gzip layer, whose module the
/// store hashes as well) is hashed on a thread of its own: the chunks are
/// reference-counted `Bytes`, handed over without a copy, at most
/// [`QUEUED_CHUNKS`] waiting (then the reader waits), so the task reading the
/// socket is not also the one hashing every byte.
pub(crate) struct BlobVerifier {
    hashing: Hashing,
    expected: Sha256Digest,
    size: u64,
    seen: u64,
    url: String,
    /// A thread could not be started: hash inline.
    no_thread: bool,
}

/// Blobs from this size on are hashed on a thread.
pub(crate) const THREAD_MIN: u64 = 1024 * 1024;

/// Chunks (each at most the transport's read buffer, a few hundred KiB) that
/// may wait for the hashing thread.
pub(crate) const QUEUED_CHUNKS: usize = 8;

enum Hashing {
    /// The sink verifies the digest.
    Off,
    Inline(ring::digest::Context),
    Thread {
        to_thread: std::sync::mpsc::SyncSender<Bytes>,
        thread: std::thread::JoinHandle<ring::digest::Context>,
    },
}

fn new_context() -> ring::digest::Context {
    ring::digest::Context::new(&ring::digest::SHA256)
}

impl BlobVerifier {
    pub(crate) fn new(expected: Sha256Digest, size: u64, url: String) -> Self {
        Self {
            hashing: Hashing::Inline(new_context()),
            expected,
            size,
            seen: 0,
            url,
            no_thread: false,
        }
    }

    /// Stops hashing: the caller's sink verifies the digest instead.
    pub(crate) fn hand_over(&mut self) {
        self.hashing = Hashing::Off;
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
    pub(crate) fn update(&mut self, chunk: &Bytes) -> Result<(), Error> {
        self.seen = self.seen.saturating_add(chunk.len() as u64);
        if self.seen > self.size {
            return Err(self.mismatch(format!(
                "a blob longer than its descriptor's {} bytes",
                self.size
            )));
        }
        if self.size >= THREAD_MIN && !self.no_thread && matches!(self.hashing, Hashing::Inline(_))
        {
            self.start_thread();
        }
        match &mut self.hashing {
            Hashing::Off => {}
            Hashing::Inline(ctx) => ctx.update(chunk),
            // A send fails only if the thread is gone (it panicked):
            // `finish` reports that.
            Hashing::Thread { to_thread, .. } => {
                let _ = to_thread.send(chunk.clone());
            }
        }
        Ok(())
    }

    /// Moves the (still empty) context to a hashing thread; stays inline if
    /// no thread can be started.
    fn start_thread(&mut self) {
        let (to_thread, chunks) = std::sync::mpsc::sync_channel::<Bytes>(QUEUED_CHUNKS);
        let (give, take) = std::sync::mpsc::sync_channel::<ring::digest::Context>(1);
        let spawned = std::thread::Builder::new()
            .name("wasm-cache-sha256".into())
            .spawn(move || {
                let mut ctx = take.recv().unwrap_or_else(|_| new_context());
                for chunk in chunks {
                    ctx.update(&chunk);
                }
                ctx
            });
        match spawned {
            Ok(thread) => {
                let Hashing::Inline(ctx) = std::mem::replace(&mut self.hashing, Hashing::Off)
                else {
                    unreachable!("called while inline")
                };
                // Cannot fail: the thread holds `take` until it has received.
                let _ = give.send(ctx);
                self.hashing = Hashing::Thread { to_thread, thread };
            }
            Err(e) => {
                tracing::debug!(error = %e, "no thread for hashing a blob; hashing inline");
                self.no_thread = true;
            }
        }
    }

    /// Checks the whole blob.
    ///
    /// # Errors
    /// [`Error::DigestMismatch`] if the size or the digest differs.
    pub(crate) fn finish(mut self) -> Result<(), Error> {
        if self.seen != self.size {
            return Err(self.mismatch(format!("a blob of {} bytes", self.seen)));
        }
        let ctx = match std::mem::replace(&mut self.hashing, Hashing::Off) {
            Hashing::Off => return Ok(()),
            Hashing::Inline(ctx) => ctx,
            Hashing::Thread { to_thread, thread } => {
                drop(to_thread);
                match thread.join() {
                    Ok(ctx) => ctx,
                    Err(_) => {
                        return Err(
                            self.mismatch("no digest: the hashing thread failed".to_owned())
                        );
                    }
                }
            }
        };
        self.compare(ctx)
    }

    fn compare(&self, ctx: ring::digest::Context) -> Result<(), Error> {
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
        v.update(&Bytes::copy_from_slice(&blob[..4])).unwrap();
        v.update(&Bytes::copy_from_slice(&blob[4..])).unwrap();
        v.finish().unwrap();

        let mut v = BlobVerifier::new(d, 10, "u".into());
        v.update(&Bytes::from_static(b"hello blob")).unwrap();
        let e = v.update(&Bytes::from_static(b"!")).unwrap_err();
        assert!(e.to_string().contains("longer than"), "{e}");

        let mut v = BlobVerifier::new(d, 10, "u".into());
        v.update(&Bytes::from_static(b"hello blub")).unwrap();
        assert!(matches!(v.finish(), Err(Error::DigestMismatch { .. })));

        let mut v = BlobVerifier::new(d, 10, "u".into());
        v.update(&Bytes::from_static(b"hello")).unwrap();
        assert!(
            v.finish()
                .unwrap_err()
                .to_string()
                .contains("a blob of 5 bytes")
        );
    }

    #[test]
    fn large_blobs_are_hashed_on_a_thread_with_the_same_verdicts() {
        let blob: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
        let d = sha256(&blob);
        let size = blob.len() as u64;
        let chunks = || {
            blob.chunks(100_000)
                .map(Bytes::copy_from_slice)
                .collect::<Vec<_>>()
        };
        let mut v = BlobVerifier::new(d, size, "u".into());
        for c in chunks() {
            v.update(&c).unwrap();
        }
        assert!(matches!(v.hashing, Hashing::Thread { .. }));
        v.finish().unwrap();

        let mut wrong = chunks();
        let mut last = wrong.pop().unwrap().to_vec();
        last[0] ^= 1;
        wrong.push(Bytes::from(last));
        let mut v = BlobVerifier::new(d, size, "u".into());
        for c in wrong {
            v.update(&c).unwrap();
        }
        let e = v.finish().unwrap_err();
        assert!(matches!(e, Error::DigestMismatch { .. }), "{e}");
    }
}
