//! The gzip layer: flate2's streaming decoder, fed push by push.
//!
//! [`flate2::write::GzDecoder`] parses the RFC 1952 header (its name and
//! comment fields are capped at 64 KiB by flate2), inflates, and checks the
//! CRC-32 and length of the trailer. It is push-based already: each `write`
//! consumes some input and hands at most one 32 KiB buffer of output to its
//! inner writer, which here is a scratch `Vec` drained into the next stage
//! after every call, so memory stays constant and a bomb is stopped within
//! 32 KiB of the limit. Multi-member gzip (as `gzip -c a b` writes) is decoded
//! one member at a time, a fresh decoder per member.

use std::io::Write;

use flate2::write::GzDecoder;
use wasm_cache_core::ModuleSink;

use crate::{Ctx, Stage, UnboxError};

/// Initial room of the scratch buffer (one flate2 output buffer).
const SCRATCH: usize = 32 * 1024;

/// A gzip stream around a Wasm module or a tar.
pub(crate) struct Gunzip {
    /// The member being decoded; `None` between members.
    member: Option<GzDecoder<Vec<u8>>>,
    /// Members started so far (a bad header after the first is trailing data).
    members: u64,
    decompressed: u64,
    inner: Stage,
}

impl Gunzip {
    pub(crate) fn new() -> Self {
        Self {
            member: Some(GzDecoder::new(Vec::with_capacity(SCRATCH))),
            members: 1,
            decompressed: 0,
            inner: Stage::detect(false),
        }
    }

    pub(crate) fn push<S: ModuleSink>(
        &mut self,
        mut data: &[u8],
        ctx: &mut Ctx<'_, S>,
    ) -> Result<(), UnboxError> {
        while !data.is_empty() {
            let members = &mut self.members;
            let dec = self.member.get_or_insert_with(|| {
                *members += 1;
                GzDecoder::new(Vec::with_capacity(SCRATCH))
            });
            let in_header = dec.header().is_none();
            let n = dec
                .write(data)
                .map_err(|e| self.decode_error(in_header, &e))?;
            self.drain(ctx)?;
            if n == 0 {
                // The member's deflate stream and its 8-byte trailer are
                // complete and more bytes follow: check it, then start the
                // next member with them.
                self.end_member(ctx)?;
            }
            data = &data[n..];
        }
        // flate2 keeps the output of the last `write` until the next call;
        // hand it on now, so that the limit and the sink see every byte of
        // this push before it returns. Inflate holds back at most one match
        // (258 bytes) of input it consumed, so this is bounded too.
        if let Some(dec) = self.member.as_mut() {
            let in_header = dec.header().is_none();
            dec.flush().map_err(|e| self.decode_error(in_header, &e))?;
            self.drain(ctx)?;
        }
        Ok(())
    }

    fn decode_error(&self, in_header: bool, e: &std::io::Error) -> UnboxError {
        UnboxError::invalid(match (in_header, self.members) {
            (true, 1) => format!("{e}"),
            (true, _) => "trailing data after the gzip stream (not another gzip member)".to_owned(),
            (false, _) => format!("corrupt gzip stream: {e}"),
        })
    }

    /// Hands what the decoder wrote to the next stage, bounding the
    /// decompressed stream by the archive limit.
    fn drain<S: ModuleSink>(&mut self, ctx: &mut Ctx<'_, S>) -> Result<(), UnboxError> {
        let Some(dec) = self.member.as_mut() else {
            return Ok(());
        };
        let out = dec.get_mut();
        if out.is_empty() {
            return Ok(());
        }
        self.decompressed = self.decompressed.saturating_add(out.len() as u64);
        if self.decompressed > ctx.archive_limit {
            return Err(UnboxError::TooLarge { limit: ctx.out.max });
        }
        self.inner.push(out, ctx)?;
        out.clear();
        Ok(())
    }

    /// Checks a complete member's trailer (CRC-32 and length) and drops it.
    fn end_member<S: ModuleSink>(&mut self, ctx: &mut Ctx<'_, S>) -> Result<(), UnboxError> {
        if let Some(dec) = self.member.as_mut() {
            dec.try_finish().map_err(|_| {
                UnboxError::invalid(
                    "gzip trailer does not match the content (CRC-32 mismatch or length mismatch)",
                )
            })?;
        }
        self.drain(ctx)?;
        self.member = None;
        Ok(())
    }

    pub(crate) fn finish<S: ModuleSink>(&mut self, ctx: &mut Ctx<'_, S>) -> Result<(), UnboxError> {
        if let Some(dec) = self.member.as_mut() {
            if dec.header().is_none() {
                return Err(UnboxError::invalid("truncated gzip header"));
            }
            // A complete member accepts no more bytes: `write` returns 0 once
            // the deflate stream ended and its 8 trailer bytes are in. Any
            // other answer means the body stopped early.
            if !matches!(dec.write(&[0]), Ok(0)) {
                return Err(UnboxError::invalid("truncated gzip stream"));
            }
            self.end_member(ctx)?;
        }
        self.inner.finish(ctx)
    }
}
