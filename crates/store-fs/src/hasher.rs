//! SHA-256 of a module as it is written, on a helper thread once the module
//! is large.
//!
//! Hashing a module (about 1.2-1.8 GB/s with SHA-NI on the benchmark machine,
//! so 35-55 ms for 64 MiB) was the largest cost of a cold download after the
//! network itself: done inline, the task that reads the socket stops reading
//! while it hashes, and the sender stalls. Here the ingest's 1 MiB buffers
//! go, once written to the file, to one thread per ingest that hashes them
//! in order and hands each buffer back for reuse; the reading task only
//! copies and writes. A module smaller than one buffer never starts the
//! thread. Memory stays bounded: at most [`IN_FLIGHT`] buffers wait for the
//! thread (a full queue blocks the writer), so an ingest holds at most
//! `IN_FLIGHT + 2` buffers whatever the module's size.

use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};
use std::thread::JoinHandle;

use wasm_cache_core::Sha256Digest;

/// Full buffers that may wait for the hashing thread.
pub(crate) const IN_FLIGHT: usize = 2;

/// The running SHA-256 of an ingest's bytes, in the order given.
pub(crate) struct StreamHasher {
    state: State,
    /// A thread could not be started once: do not try again.
    no_thread: bool,
}

enum State {
    /// Hashed on the caller's thread (small modules, or no thread could be
    /// started).
    Inline(ring::digest::Context),
    /// Buffers go to `thread`, which returns them on `back` once hashed and
    /// its context when `to_thread` is closed.
    Thread {
        to_thread: SyncSender<Vec<u8>>,
        back: Receiver<Vec<u8>>,
        thread: JoinHandle<ring::digest::Context>,
    },
    /// Only between two states.
    Moving,
}

impl std::fmt::Debug for StreamHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.state {
            State::Inline(_) => "StreamHasher(inline)",
            State::Thread { .. } => "StreamHasher(thread)",
            State::Moving => "StreamHasher(moving)",
        })
    }
}

fn new_context() -> ring::digest::Context {
    ring::digest::Context::new(&ring::digest::SHA256)
}

impl StreamHasher {
    pub(crate) fn new() -> Self {
        Self {
            state: State::Inline(new_context()),
            no_thread: false,
        }
    }

    /// Hashes `bytes` on this thread; for the small tail of a stream (the
    /// hashing thread, if any, is drained first, to keep the order).
    pub(crate) fn update(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.inline().update(bytes);
    }

    /// Hashes a full buffer, on the hashing thread (started on the first
    /// call), and returns an empty buffer to fill next: one the thread is
    /// done with when there is one, else a new one of `capacity`.
    pub(crate) fn update_owned(&mut self, buf: Vec<u8>, capacity: usize) -> Vec<u8> {
        if matches!(self.state, State::Inline(_)) && !self.no_thread {
            self.start_thread();
        }
        let mut buf = buf;
        if let State::Thread {
            to_thread, back, ..
        } = &self.state
        {
            match to_thread.send(buf) {
                Ok(()) => {
                    return match back.try_recv() {
                        Ok(mut reused) => {
                            reused.clear();
                            reused
                        }
                        Err(TryRecvError::Empty | TryRecvError::Disconnected) => {
                            Vec::with_capacity(capacity)
                        }
                    };
                }
                // The thread is gone (it panicked): `inline` takes its
                // context back, which fails the same way.
                Err(std::sync::mpsc::SendError(unsent)) => buf = unsent,
            }
        }
        // No thread could be started (or it is gone): hashed here.
        self.inline().update(&buf);
        buf.clear();
        buf
    }

    /// The digest of everything given so far; hashing may go on after it.
    pub(crate) fn digest(&mut self) -> Sha256Digest {
        let d = self.inline().clone().finish();
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(d.as_ref());
        Sha256Digest::from_bytes(bytes)
    }

    /// The inline context, after taking the thread's back (it first hashes
    /// every buffer sent to it).
    fn inline(&mut self) -> &mut ring::digest::Context {
        if let State::Thread { .. } = self.state {
            let State::Thread {
                to_thread, thread, ..
            } = std::mem::replace(&mut self.state, State::Moving)
            else {
                unreachable!("matched above")
            };
            drop(to_thread);
            let ctx = match thread.join() {
                Ok(ctx) => ctx,
                // ring's update does not panic; should the thread die all the
                // same, the bytes it took are lost, and so is the digest:
                // resume the panic rather than return a wrong one.
                Err(panic) => std::panic::resume_unwind(panic),
            };
            self.state = State::Inline(ctx);
        }
        match &mut self.state {
            State::Inline(ctx) => ctx,
            _ => unreachable!("the state is inline here"),
        }
    }

    fn start_thread(&mut self) {
        let (to_thread, from_writer) = sync_channel::<Vec<u8>>(IN_FLIGHT);
        let (to_writer, back) = sync_channel::<Vec<u8>>(IN_FLIGHT + 2);
        // The context goes to the thread only once it runs, so a failed spawn
        // loses nothing.
        let (give, take) = sync_channel::<ring::digest::Context>(1);
        let spawned = std::thread::Builder::new()
            .name("wasm-cache-sha256".into())
            .spawn(move || {
                let mut ctx = take.recv().unwrap_or_else(|_| new_context());
                for buf in from_writer {
                    ctx.update(&buf);
                    // Best effort: a full or closed return queue drops it.
                    let _ = to_writer.try_send(buf);
                }
                ctx
            });
        match spawned {
            Ok(thread) => {
                let State::Inline(ctx) = std::mem::replace(&mut self.state, State::Moving) else {
                    unreachable!("called on an inline hasher")
                };
                // Cannot fail: the thread holds `take` until it has received.
                let _ = give.send(ctx);
                self.state = State::Thread {
                    to_thread,
                    back,
                    thread,
                };
            }
            Err(e) => {
                tracing::debug!(error = %e, "no thread for hashing; hashing inline");
                self.no_thread = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(bytes: &[u8]) -> Sha256Digest {
        let d = ring::digest::digest(&ring::digest::SHA256, bytes);
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        Sha256Digest::from_bytes(out)
    }

    #[test]
    fn inline_owned_and_mixed_updates_hash_the_stream_in_order() {
        let data: Vec<u8> = (0..6_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut h = StreamHasher::new();
        let mut at = 0;
        // Small inline pieces, then owned buffers, a digest in the middle,
        // more owned buffers and an inline tail.
        for n in [1usize, 7, 100_000] {
            h.update(&data[at..at + n]);
            at += n;
        }
        let mut buf = Vec::new();
        for (i, n) in [1_000_000usize, 1_048_576, 333, 1_048_576, 2_000_000]
            .into_iter()
            .enumerate()
        {
            if i == 3 {
                assert_eq!(h.digest(), sha(&data[..at]));
            }
            buf.extend_from_slice(&data[at..at + n]);
            at += n;
            buf = h.update_owned(buf, 1 << 20);
            assert!(buf.is_empty());
        }
        h.update(&data[at..]);
        assert_eq!(h.digest(), sha(&data));
        // And again after the digest: hashing goes on.
        buf.extend_from_slice(b"more");
        let _ = h.update_owned(buf, 16);
        let mut all = data.clone();
        all.extend_from_slice(b"more");
        assert_eq!(h.digest(), sha(&all));
    }

    #[test]
    fn an_empty_stream_hashes_to_the_empty_digest() {
        assert_eq!(StreamHasher::new().digest(), sha(b""));
    }
}
