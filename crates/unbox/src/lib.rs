//! # wasm-cache-unbox
//!
//! Streaming unboxing: raw Wasm, gzip, tar and tar.gz, pushed chunk by chunk.
//! Layers: format detection, gzip (flate2's streaming decoder) and tar.
//!
//! Fetchers receive bytes as they arrive from the network; an [`Unboxer`] turns
//! them into the module bytes the caller's [`ModuleSink`] must see, without ever
//! holding the whole body:
//!
//! - the format is detected from the first bytes: the Wasm magic (`00 61 73 6d`)
//!   passes through; gzip (`1f 8b`) is decompressed and the decompressed stream is
//!   detected again (Wasm or tar, so tar.gz works; gzip inside gzip does not); a
//!   tar (`ustar` at offset 257 of the first 512-byte header) yields one entry,
//!   chosen by a [`TarEntryRule`]; anything else is [`UnboxError::Invalid`];
//! - the output is bounded by `max_size`: one byte more is
//!   [`UnboxError::TooLarge`], never a truncation, so a gzip bomb is an error and
//!   not an out-of-memory. The decompressed stream (including tar entries that
//!   are skipped) may exceed `max_size` by at most [`ARCHIVE_OVERHEAD`], so a
//!   bomb hidden in a skipped entry is bounded too, and the raw body by at most
//!   [`boxed_limit`] (room for a compressor that expands incompressible data);
//! - memory is constant: a 512-byte detection buffer, a 512-byte tar header,
//!   flate2's inflate state with a 32 KiB output buffer (its gzip header
//!   parser caps the name and comment fields at 64 KiB) and at most [`MAX_META_SIZE`] for a GNU long
//!   name or pax header. Nothing is ever allocated by a size an archive declares;
//!   skipped entries are skipped by counting bytes;
//! - the output must start with a valid 8-byte Wasm header
//!   ([`check_wasm_header`]): the first 8 bytes are held back until they are
//!   checked, so the sink never sees a byte of something that is not Wasm.
//!
//! Tar entry names are only ever compared by base name; they are never used as
//! paths (nothing here, nor in any fetcher, writes an entry to disk by its name),
//! so names such as `../../etc/plugin.wasm` are harmless.
//!
//! ```
//! use std::io::Write;
//! use wasm_cache_unbox::{TarEntryRule, Unboxer};
//!
//! let module = b"\0asm\x01\0\0\0 module body".to_vec();
//! let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
//! gz.write_all(&module)?;
//! let body = gz.finish()?;
//!
//! let mut unboxer = Unboxer::new(Vec::new(), 1024, TarEntryRule::PluginWasmOrFirstWasm);
//! for chunk in body.chunks(3) {
//!     unboxer.push(chunk)?; // as the network delivers it
//! }
//! let (out, written) = unboxer.finish()?;
//! assert_eq!(out, module);
//! assert_eq!(written, module.len() as u64);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;

use wasm_cache_core::{Error, ModuleSink, ModuleUrl, check_wasm_header};

use crate::detect::decide;
use crate::gzip::Gunzip;
use crate::tar::TarParser;

mod detect;
mod gzip;
mod tar;
#[cfg(test)]
mod tests;

/// How much larger than `max_size` the archive around a module may be (tar
/// headers, padding, small extra entries), in bytes: 1 MiB.
pub const ARCHIVE_OVERHEAD: u64 = 1024 * 1024;

/// The most raw (possibly compressed) bytes accepted for a module of at most
/// `max_size` bytes: the archive bound plus an eighth of `max_size`, because a
/// compressor may expand incompressible data (deflate with Huffman codes of up
/// to 9 bits per byte: at most about 12.5%; zlib-rs at level 1 expands random
/// bytes by 5.5%).
pub fn boxed_limit(max_size: u64) -> u64 {
    max_size
        .saturating_add(max_size / 8)
        .saturating_add(ARCHIVE_OVERHEAD)
}

/// The largest GNU long-name (`L`) or pax (`x`) header accepted: 64 KiB.
pub const MAX_META_SIZE: u64 = 64 * 1024;

/// The largest chunk handed to the inner sink in one `write`: 256 KiB.
pub const MAX_OUTPUT_CHUNK: usize = 256 * 1024;

const BLOCK: usize = 512;

/// Which tar entry holds the module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TarEntryRule {
    /// Only a regular file whose base name is `plugin.wasm` (Docker and OCI
    /// image layers).
    PluginWasm,
    /// The first regular file that is named `plugin.wasm` or whose content
    /// starts with the Wasm magic (HTTP downloads of archives).
    ///
    /// The first match wins, even if a `plugin.wasm` comes later: the archive
    /// is streamed, and by the time a later entry shows up the earlier one has
    /// already gone to the sink; going back would mean buffering the archive.
    PluginWasmOrFirstWasm,
}

/// Why a body could not be unboxed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UnboxError {
    /// The module (or the archive around it) exceeds the size limit.
    #[error("exceeds the size limit of {limit} bytes")]
    TooLarge {
        /// The size limit of the module, in bytes.
        limit: u64,
    },
    /// The body is not Wasm, or an archive without a usable Wasm entry, or broken.
    #[error("{reason}")]
    Invalid {
        /// What is wrong.
        reason: String,
    },
    /// The inner sink refused a chunk.
    #[error("writing the module failed")]
    Sink(#[source] std::io::Error),
}

impl UnboxError {
    fn invalid(reason: impl Into<String>) -> Self {
        Self::Invalid {
            reason: reason.into(),
        }
    }

    /// The workspace [`Error`] for a fetch of `url`: [`Error::TooLarge`],
    /// [`Error::InvalidModule`] or [`Error::Sink`], with the URL redacted.
    pub fn into_error(self, url: &ModuleUrl) -> Error {
        let url = url.redacted();
        match self {
            Self::TooLarge { limit } => Error::TooLarge { url, limit },
            Self::Invalid { reason } => Error::InvalidModule { url, reason },
            Self::Sink(source) => Error::Sink { url, source },
        }
    }
}

/// A push-based unboxer: feed it the raw body with [`Unboxer::push`], then call
/// [`Unboxer::finish`]. The unboxed module goes to the inner sink as it is found.
///
/// After an error the unboxer is spent: further calls fail with
/// [`UnboxError::Invalid`].
pub struct Unboxer<S: ModuleSink> {
    out: Output<S>,
    stage: Stage,
    rule: TarEntryRule,
    input: u64,
    /// Bound on raw bytes ([`boxed_limit`]).
    input_limit: u64,
    archive_limit: u64,
    failed: bool,
    /// The raw length announced by the fetcher, passed on as the inner
    /// sink's [`ModuleSink::size_hint`] once the body turns out to be plain Wasm.
    announced: Option<u64>,
}

impl<S: ModuleSink> fmt::Debug for Unboxer<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Unboxer")
            .field("rule", &self.rule)
            .field("format", &self.stage.name())
            .field("input", &self.input)
            .field("written", &self.out.written)
            .field("max_size", &self.out.max)
            .finish_non_exhaustive()
    }
}

impl<S: ModuleSink> Unboxer<S> {
    /// An unboxer writing at most `max_size` module bytes into `inner`, choosing
    /// tar entries by `rule`.
    pub fn new(inner: S, max_size: u64, rule: TarEntryRule) -> Self {
        Self {
            out: Output {
                inner,
                written: 0,
                max: max_size,
                head: [0; 8],
                head_len: 0,
            },
            stage: Stage::detect(true),
            rule,
            input: 0,
            input_limit: boxed_limit(max_size),
            archive_limit: max_size.saturating_add(ARCHIVE_OVERHEAD),
            failed: false,
            announced: None,
        }
    }

    /// The body's length, when the fetcher knows it (`Content-Length`, a
    /// layer's size). If the body is plain Wasm (nothing to unbox) it is the
    /// module's length, and the inner sink gets it as a
    /// [`ModuleSink::size_hint`]; a boxed body's module length is unknown.
    pub fn announce_len(&mut self, len: Option<u64>) {
        self.announced = len;
    }

    /// Feeds the next raw (possibly boxed) bytes of the body.
    ///
    /// # Errors
    /// [`UnboxError::TooLarge`] past the limit, [`UnboxError::Invalid`] for a
    /// body that cannot hold a module, [`UnboxError::Sink`] from the inner sink.
    pub fn push(&mut self, chunk: &[u8]) -> Result<(), UnboxError> {
        if self.failed {
            return Err(UnboxError::invalid("unboxer used after an error"));
        }
        self.input = self.input.saturating_add(chunk.len() as u64);
        let result = if self.input > self.input_limit {
            Err(UnboxError::TooLarge {
                limit: self.out.max,
            })
        } else {
            let mut ctx = Ctx {
                out: &mut self.out,
                rule: self.rule,
                archive_limit: self.archive_limit,
            };
            self.stage.push(chunk, &mut ctx)
        };
        if self.announced.is_some() && !matches!(self.stage, Stage::Detect { .. }) {
            if let (Stage::Pass, Some(len)) = (&self.stage, self.announced) {
                self.out.inner.size_hint(len);
            }
            self.announced = None;
        }
        self.failed = result.is_err();
        result
    }

    /// Module bytes accepted so far (the 8-byte header counts once it is seen,
    /// even before the inner sink gets it).
    pub fn written(&self) -> u64 {
        self.out.written
    }

    /// Ends the body: checks that it was complete and held a valid module.
    /// Returns the inner sink and the number of module bytes written to it.
    ///
    /// # Errors
    /// [`UnboxError::Invalid`] for a truncated archive, an archive without a
    /// module, or a module shorter than its 8-byte header.
    pub fn finish(mut self) -> Result<(S, u64), UnboxError> {
        if self.failed {
            return Err(UnboxError::invalid("unboxer used after an error"));
        }
        let mut ctx = Ctx {
            out: &mut self.out,
            rule: self.rule,
            archive_limit: self.archive_limit,
        };
        self.stage.finish(&mut ctx)?;
        self.out.finish()
    }
}

/// Where unboxed bytes go: enforces the size limit and the Wasm header.
struct Output<S> {
    inner: S,
    written: u64,
    max: u64,
    head: [u8; 8],
    head_len: usize,
}

impl<S: ModuleSink> Output<S> {
    fn write(&mut self, mut data: &[u8]) -> Result<(), UnboxError> {
        if data.is_empty() {
            return Ok(());
        }
        let total = self.written.saturating_add(data.len() as u64);
        if total > self.max {
            return Err(UnboxError::TooLarge { limit: self.max });
        }
        self.written = total;
        if self.head_len < self.head.len() {
            let take = (self.head.len() - self.head_len).min(data.len());
            self.head[self.head_len..self.head_len + take].copy_from_slice(&data[..take]);
            self.head_len += take;
            data = &data[take..];
            if self.head_len < self.head.len() {
                return Ok(());
            }
            check_wasm_header(&self.head).map_err(UnboxError::invalid)?;
            self.inner.write(&self.head).map_err(UnboxError::Sink)?;
        }
        for piece in data.chunks(MAX_OUTPUT_CHUNK) {
            self.inner.write(piece).map_err(UnboxError::Sink)?;
        }
        Ok(())
    }

    fn finish(self) -> Result<(S, u64), UnboxError> {
        if self.head_len < self.head.len() {
            let reason = check_wasm_header(&self.head[..self.head_len])
                .err()
                .unwrap_or_else(|| "module shorter than its header".to_owned());
            return Err(UnboxError::invalid(reason));
        }
        Ok((self.inner, self.written))
    }
}

struct Ctx<'a, S> {
    out: &'a mut Output<S>,
    rule: TarEntryRule,
    archive_limit: u64,
}

/// One layer of the format pipeline.
enum Stage {
    /// Collecting the first bytes to tell the format.
    Detect {
        buf: Box<[u8; BLOCK]>,
        len: usize,
        /// Whether gzip is accepted here (only on the outer layer).
        outer: bool,
    },
    /// Raw Wasm: bytes go straight to the output.
    Pass,
    Tar(Box<TarParser>),
    Gzip(Box<Gunzip>),
}

impl Stage {
    fn detect(outer: bool) -> Self {
        Self::Detect {
            buf: Box::new([0; BLOCK]),
            len: 0,
            outer,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Self::Detect { .. } => "unknown yet",
            Self::Pass => "wasm",
            Self::Tar(_) => "tar",
            Self::Gzip(_) => "gzip",
        }
    }

    fn push<S: ModuleSink>(&mut self, data: &[u8], ctx: &mut Ctx<'_, S>) -> Result<(), UnboxError> {
        match self {
            Self::Detect { buf, len, outer } => {
                let take = (BLOCK - *len).min(data.len());
                buf[*len..*len + take].copy_from_slice(&data[..take]);
                *len += take;
                let Some(next) = decide(&buf[..*len], *outer, false)? else {
                    return Ok(());
                };
                let (held, n) = (std::mem::replace(buf, Box::new([0; BLOCK])), *len);
                *self = next;
                self.push(&held[..n], ctx)?;
                self.push(&data[take..], ctx)
            }
            Self::Pass => ctx.out.write(data),
            Self::Tar(t) => t.push(data, ctx),
            Self::Gzip(g) => g.push(data, ctx),
        }
    }

    fn finish<S: ModuleSink>(&mut self, ctx: &mut Ctx<'_, S>) -> Result<(), UnboxError> {
        let rule = ctx.rule;
        match self {
            // Every format is decided during `push` once enough bytes are in,
            // so `decide` at the end only produces the reason.
            Self::Detect { buf, len, outer } => match decide(&buf[..*len], *outer, true) {
                Err(e) => Err(e),
                Ok(_) => Err(UnboxError::invalid(
                    "body ended before its format was known",
                )),
            },
            Self::Pass => Ok(()),
            Self::Tar(t) => t.finish(rule),
            Self::Gzip(g) => g.finish(ctx),
        }
    }
}
