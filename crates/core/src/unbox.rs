//! Streaming unboxing: raw Wasm, gzip, tar and tar.gz, pushed chunk by chunk.
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
//! - memory is constant: a 512-byte detection buffer, a 512-byte tar header, a
//!   32 KiB decompression buffer and at most [`MAX_META_SIZE`] for a GNU long
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
//! use wasm_cache_core::unbox::{TarEntryRule, Unboxer};
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

use flate2::{Crc, Decompress, FlushDecompress, Status};

use crate::{Error, ModuleSink, ModuleUrl, WASM_MAGIC, check_wasm_header};

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

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const BLOCK: usize = 512;
const DETECT_LEN: usize = 262; // "ustar" at 257..262
const INFLATE_BUF: usize = 32 * 1024;
const PLUGIN_WASM: &[u8] = b"plugin.wasm";

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
        self.stage.finish(self.rule)?;
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

    fn finish(&mut self, rule: TarEntryRule) -> Result<(), UnboxError> {
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
            Self::Gzip(g) => g.finish(rule),
        }
    }
}

/// Tells the format from the first bytes: `None` while undecided.
fn decide(buf: &[u8], outer: bool, at_end: bool) -> Result<Option<Stage>, UnboxError> {
    if buf.len() >= 4 && buf[..4] == WASM_MAGIC {
        return Ok(Some(Stage::Pass));
    }
    if buf.len() >= 2 && buf[..2] == GZIP_MAGIC {
        return if outer {
            Ok(Some(Stage::Gzip(Box::new(Gunzip::new()))))
        } else {
            Err(UnboxError::invalid(
                "gzip inside gzip is not supported (expected Wasm or tar after decompression)",
            ))
        };
    }
    if buf.len() >= DETECT_LEN && &buf[257..262] == b"ustar" {
        return Ok(Some(Stage::Tar(Box::new(TarParser::new()))));
    }
    if buf.len() < DETECT_LEN && !at_end {
        return Ok(None);
    }
    if buf.is_empty() {
        let what = if outer {
            "body is empty"
        } else {
            "gzip content is empty"
        };
        return Err(UnboxError::invalid(what));
    }
    if buf.len() < 4 && WASM_MAGIC.starts_with(buf) {
        let reason = check_wasm_header(buf).err().unwrap_or_default();
        return Err(UnboxError::invalid(reason));
    }
    let shown = &buf[..buf.len().min(8)];
    let formats = if outer {
        "Wasm, gzip or tar"
    } else {
        "Wasm or tar"
    };
    let inside = if outer { "" } else { " inside gzip" };
    Err(UnboxError::invalid(format!(
        "not {formats}{inside} (first bytes {shown:02x?})"
    )))
}

/// Streaming gzip (RFC 1952) decoder over `flate2::Decompress` (raw deflate),
/// with header parsing, CRC-32 and length checks, and multi-member support.
struct Gunzip {
    state: GzState,
    inflate: Decompress,
    crc: Crc,
    buf: Box<[u8]>,
    decompressed: u64,
    inner: Stage,
}

enum GzState {
    /// The 10-byte fixed header.
    Fixed {
        got: [u8; 10],
        n: usize,
    },
    /// FEXTRA length (2 bytes) then its data.
    ExtraLen {
        flags: u8,
        got: [u8; 2],
        n: usize,
    },
    ExtraData {
        flags: u8,
        left: usize,
    },
    /// FNAME / FCOMMENT: zero-terminated, skipped.
    Name {
        flags: u8,
    },
    Comment {
        flags: u8,
    },
    HeaderCrc {
        left: usize,
    },
    Body,
    Trailer {
        got: [u8; 8],
        n: usize,
    },
    /// A member ended; more bytes must start another member.
    Done,
}

const FHCRC: u8 = 0x02;
const FEXTRA: u8 = 0x04;
const FNAME: u8 = 0x08;
const FCOMMENT: u8 = 0x10;

impl Gunzip {
    fn new() -> Self {
        Self {
            state: GzState::Fixed { got: [0; 10], n: 0 },
            inflate: Decompress::new(false),
            crc: Crc::new(),
            buf: vec![0; INFLATE_BUF].into_boxed_slice(),
            decompressed: 0,
            inner: Stage::detect(false),
        }
    }

    fn push<S: ModuleSink>(
        &mut self,
        mut data: &[u8],
        ctx: &mut Ctx<'_, S>,
    ) -> Result<(), UnboxError> {
        while !data.is_empty() {
            data = match &mut self.state {
                GzState::Done => {
                    // Another member (multi-member gzip, as `gzip -c a b` writes).
                    self.inflate.reset(false);
                    self.crc.reset();
                    self.state = GzState::Fixed { got: [0; 10], n: 0 };
                    data
                }
                GzState::Fixed { got, n } => {
                    let take = (10 - *n).min(data.len());
                    got[*n..*n + take].copy_from_slice(&data[..take]);
                    *n += take;
                    if *n == 10 {
                        let flags = got[3];
                        if got[..2] != GZIP_MAGIC {
                            return Err(UnboxError::invalid(format!(
                                "trailing data after the gzip stream (first bytes {:02x?})",
                                &got[..2]
                            )));
                        }
                        if got[2] != 8 {
                            return Err(UnboxError::invalid(format!(
                                "unsupported gzip compression method {}",
                                got[2]
                            )));
                        }
                        if flags & 0xe0 != 0 {
                            return Err(UnboxError::invalid(format!(
                                "invalid gzip header flags {flags:#04x}"
                            )));
                        }
                        self.state = if flags & FEXTRA != 0 {
                            GzState::ExtraLen {
                                flags,
                                got: [0; 2],
                                n: 0,
                            }
                        } else {
                            after_extra(flags)
                        };
                    }
                    &data[take..]
                }
                GzState::ExtraLen { flags, got, n } => {
                    let take = (2 - *n).min(data.len());
                    got[*n..*n + take].copy_from_slice(&data[..take]);
                    *n += take;
                    if *n == 2 {
                        let left = usize::from(u16::from_le_bytes(*got));
                        self.state = GzState::ExtraData {
                            flags: *flags,
                            left,
                        };
                    }
                    &data[take..]
                }
                GzState::ExtraData { flags, left } => {
                    let take = (*left).min(data.len());
                    *left -= take;
                    if *left == 0 {
                        self.state = after_extra(*flags);
                    }
                    &data[take..]
                }
                GzState::Name { flags } => match data.iter().position(|&b| b == 0) {
                    Some(i) => {
                        self.state = after_name(*flags);
                        &data[i + 1..]
                    }
                    None => &[],
                },
                GzState::Comment { flags } => match data.iter().position(|&b| b == 0) {
                    Some(i) => {
                        self.state = after_comment(*flags);
                        &data[i + 1..]
                    }
                    None => &[],
                },
                GzState::HeaderCrc { left } => {
                    let take = (*left).min(data.len());
                    *left -= take;
                    if *left == 0 {
                        self.state = GzState::Body;
                    }
                    &data[take..]
                }
                GzState::Body => self.inflate_some(data, ctx)?,
                GzState::Trailer { got, n } => {
                    let take = (8 - *n).min(data.len());
                    got[*n..*n + take].copy_from_slice(&data[..take]);
                    *n += take;
                    if *n == 8 {
                        let crc = u32::from_le_bytes([got[0], got[1], got[2], got[3]]);
                        let len = u32::from_le_bytes([got[4], got[5], got[6], got[7]]);
                        if crc != self.crc.sum() {
                            return Err(UnboxError::invalid(format!(
                                "gzip CRC-32 mismatch: trailer says {crc:08x}, content has {:08x}",
                                self.crc.sum()
                            )));
                        }
                        if len != self.crc.amount() {
                            return Err(UnboxError::invalid(format!(
                                "gzip length mismatch: trailer says {len}, content has {}",
                                self.crc.amount()
                            )));
                        }
                        self.state = GzState::Done;
                    }
                    &data[take..]
                }
            };
        }
        Ok(())
    }

    /// Inflates from `data` until the input is used up or the deflate stream
    /// ends; returns the unused input.
    fn inflate_some<'d, S: ModuleSink>(
        &mut self,
        mut data: &'d [u8],
        ctx: &mut Ctx<'_, S>,
    ) -> Result<&'d [u8], UnboxError> {
        loop {
            let (in0, out0) = (self.inflate.total_in(), self.inflate.total_out());
            let status = self
                .inflate
                .decompress(data, &mut self.buf, FlushDecompress::None)
                .map_err(|e| UnboxError::invalid(format!("corrupt gzip stream: {e}")))?;
            let consumed = usize::try_from(self.inflate.total_in() - in0)
                .map_err(|_| UnboxError::invalid("gzip decoder overflow"))?;
            let produced = usize::try_from(self.inflate.total_out() - out0)
                .map_err(|_| UnboxError::invalid("gzip decoder overflow"))?;
            data = &data[consumed..];
            if produced > 0 {
                let out = &self.buf[..produced];
                self.crc.update(out);
                self.decompressed = self.decompressed.saturating_add(produced as u64);
                if self.decompressed > ctx.archive_limit {
                    return Err(UnboxError::TooLarge { limit: ctx.out.max });
                }
                self.inner.push(out, ctx)?;
            }
            match status {
                Status::StreamEnd => {
                    self.state = GzState::Trailer { got: [0; 8], n: 0 };
                    return Ok(data);
                }
                Status::Ok | Status::BufError => {
                    if data.is_empty() && produced < self.buf.len() {
                        return Ok(data);
                    }
                    if consumed == 0 && produced == 0 {
                        return Err(UnboxError::invalid("gzip decoder made no progress"));
                    }
                }
            }
        }
    }

    fn finish(&mut self, rule: TarEntryRule) -> Result<(), UnboxError> {
        match self.state {
            GzState::Done => self.inner.finish(rule),
            GzState::Body | GzState::Trailer { .. } => {
                Err(UnboxError::invalid("truncated gzip stream"))
            }
            _ => Err(UnboxError::invalid("truncated gzip header")),
        }
    }
}

fn after_extra(flags: u8) -> GzState {
    if flags & FNAME != 0 {
        GzState::Name { flags }
    } else {
        after_name(flags)
    }
}

fn after_name(flags: u8) -> GzState {
    if flags & FCOMMENT != 0 {
        GzState::Comment { flags }
    } else {
        after_comment(flags)
    }
}

fn after_comment(flags: u8) -> GzState {
    if flags & FHCRC != 0 {
        GzState::HeaderCrc { left: 2 }
    } else {
        GzState::Body
    }
}

/// A streaming tar reader that forwards one entry's content to the output.
struct TarParser {
    header: [u8; BLOCK],
    filled: usize,
    state: TarState,
    /// A path learnt from a GNU `L` or pax `x` header, for the next entry.
    long_name: Option<Vec<u8>>,
    /// The metadata entry being collected (bounded by [`MAX_META_SIZE`]).
    meta: Vec<u8>,
    /// The first bytes of an entry whose content decides whether it is Wasm.
    peek: [u8; 4],
    peek_len: usize,
    /// An entry was selected and fully written.
    found: bool,
    entries: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Data {
    Skip,
    LongName,
    Pax,
    /// Collecting the first 4 bytes to look for the Wasm magic.
    Peek,
    Emit,
}

enum TarState {
    Header,
    Data {
        kind: Data,
        left: u64,
        pad: u64,
    },
    Padding {
        left: u64,
    },
    /// After the end-of-archive marker: the rest (record padding) is ignored.
    End,
}

impl TarParser {
    fn new() -> Self {
        Self {
            header: [0; BLOCK],
            filled: 0,
            state: TarState::Header,
            long_name: None,
            meta: Vec::new(),
            peek: [0; 4],
            peek_len: 0,
            found: false,
            entries: 0,
        }
    }

    fn push<S: ModuleSink>(
        &mut self,
        mut data: &[u8],
        ctx: &mut Ctx<'_, S>,
    ) -> Result<(), UnboxError> {
        while !data.is_empty() {
            match &mut self.state {
                TarState::End => return Ok(()),
                TarState::Header => {
                    let take = (BLOCK - self.filled).min(data.len());
                    self.header[self.filled..self.filled + take].copy_from_slice(&data[..take]);
                    self.filled += take;
                    data = &data[take..];
                    if self.filled == BLOCK {
                        self.filled = 0;
                        self.start_entry(ctx.rule)?;
                    }
                }
                TarState::Padding { left } => {
                    let take = usize::try_from(*left).unwrap_or(usize::MAX).min(data.len());
                    *left -= take as u64;
                    data = &data[take..];
                    if *left == 0 {
                        self.state = TarState::Header;
                    }
                }
                TarState::Data { kind, left, pad } => {
                    let (kind, pad) = (*kind, *pad);
                    let take = usize::try_from(*left).unwrap_or(usize::MAX).min(data.len());
                    *left -= take as u64;
                    let done = *left == 0;
                    let (part, rest) = data.split_at(take);
                    data = rest;
                    // May turn a Peek into Emit or Skip.
                    self.entry_data(kind, part, ctx)?;
                    if done {
                        if let TarState::Data { kind, .. } = self.state {
                            self.close_entry(kind);
                        }
                        self.state = if pad == 0 {
                            TarState::Header
                        } else {
                            TarState::Padding { left: pad }
                        };
                    }
                }
            }
        }
        Ok(())
    }

    /// Parses the header block in `self.header` and sets up its data.
    fn start_entry(&mut self, rule: TarEntryRule) -> Result<(), UnboxError> {
        let h = &self.header;
        if h.iter().all(|&b| b == 0) {
            self.state = TarState::End;
            return Ok(());
        }
        self.entries += 1;
        let n = self.entries;
        verify_checksum(h).map_err(|r| UnboxError::invalid(format!("tar entry {n}: {r}")))?;
        let size = parse_number(&h[124..136])
            .map_err(|r| UnboxError::invalid(format!("tar entry {n}: size: {r}")))?;
        let typeflag = h[156];
        let kind = match typeflag {
            b'L' | b'x' => {
                if size > MAX_META_SIZE {
                    let what = if typeflag == b'L' {
                        "GNU long name"
                    } else {
                        "pax header"
                    };
                    return Err(UnboxError::invalid(format!(
                        "tar entry {n}: {what} of {size} bytes exceeds the limit of {MAX_META_SIZE} bytes"
                    )));
                }
                self.meta.clear();
                if typeflag == b'L' {
                    Data::LongName
                } else {
                    Data::Pax
                }
            }
            // Regular files ('0', NUL for old tars, '7' contiguous).
            b'0' | 0 | b'7' => {
                let name = match self.long_name.take() {
                    Some(n) => n,
                    None => header_name(h),
                };
                let base = name.rsplit(|&b| b == b'/').next().unwrap_or(&[]);
                if self.found {
                    Data::Skip
                } else if base == PLUGIN_WASM {
                    Data::Emit
                } else if rule == TarEntryRule::PluginWasmOrFirstWasm {
                    self.peek_len = 0;
                    Data::Peek
                } else {
                    Data::Skip
                }
            }
            // Everything else (directories, links, global pax 'g', GNU 'K', ...)
            // is skipped; a pending long name applied to it and is used up.
            _ => {
                if typeflag != b'g' {
                    self.long_name = None;
                }
                Data::Skip
            }
        };
        if size == 0 {
            self.state = TarState::Header;
            self.close_entry(kind);
        } else {
            let pad = (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64;
            self.state = TarState::Data {
                kind,
                left: size,
                pad,
            };
        }
        Ok(())
    }

    fn entry_data<S: ModuleSink>(
        &mut self,
        kind: Data,
        part: &[u8],
        ctx: &mut Ctx<'_, S>,
    ) -> Result<(), UnboxError> {
        match kind {
            Data::Skip => Ok(()),
            Data::LongName | Data::Pax => {
                // Bounded by MAX_META_SIZE, checked against the header's size.
                self.meta.extend_from_slice(part);
                Ok(())
            }
            Data::Emit => ctx.out.write(part),
            Data::Peek => {
                let take = (4 - self.peek_len).min(part.len());
                self.peek[self.peek_len..self.peek_len + take].copy_from_slice(&part[..take]);
                self.peek_len += take;
                if self.peek_len < 4 {
                    return Ok(());
                }
                let rest = &part[take..];
                let next = if self.peek == WASM_MAGIC {
                    ctx.out.write(&self.peek)?;
                    ctx.out.write(rest)?;
                    Data::Emit
                } else {
                    Data::Skip
                };
                if let TarState::Data { kind, .. } = &mut self.state {
                    *kind = next;
                }
                Ok(())
            }
        }
    }

    /// An entry's data is complete: remember a selection or a learnt path.
    fn close_entry(&mut self, kind: Data) {
        match kind {
            // An empty or short plugin.wasm chosen by name still counts as the
            // selection; the output check reports it as too short.
            Data::Emit => self.found = true,
            Data::LongName | Data::Pax => self.apply_meta(kind),
            Data::Skip | Data::Peek => {}
        }
    }

    fn apply_meta(&mut self, kind: Data) {
        let meta = std::mem::take(&mut self.meta);
        match kind {
            Data::LongName => {
                let end = meta.iter().position(|&b| b == 0).unwrap_or(meta.len());
                self.long_name = Some(meta[..end].to_vec());
            }
            Data::Pax => {
                if let Some(path) = pax_path(&meta) {
                    self.long_name = Some(path.to_vec());
                }
            }
            _ => {}
        }
    }

    fn finish(&mut self, rule: TarEntryRule) -> Result<(), UnboxError> {
        match self.state {
            TarState::End => {}
            TarState::Header if self.filled == 0 => {}
            TarState::Header => return Err(UnboxError::invalid("truncated tar header")),
            TarState::Data { .. } | TarState::Padding { .. } => {
                return Err(UnboxError::invalid("truncated tar entry"));
            }
        }
        if self.found {
            return Ok(());
        }
        Err(UnboxError::invalid(match rule {
            TarEntryRule::PluginWasm => "tar archive holds no regular file named plugin.wasm",
            TarEntryRule::PluginWasmOrFirstWasm => {
                "tar archive holds no regular file named plugin.wasm nor one starting with the Wasm magic"
            }
        }))
    }
}

/// The entry name from a ustar header: `prefix/name` for POSIX ustar, `name` otherwise.
fn header_name(h: &[u8; BLOCK]) -> Vec<u8> {
    let field = |r: std::ops::Range<usize>| {
        let f = &h[r];
        &f[..f.iter().position(|&b| b == 0).unwrap_or(f.len())]
    };
    let name = field(0..100);
    let prefix = field(345..500);
    // "ustar\0" is POSIX (prefix field valid); GNU writes "ustar  \0" and uses
    // those bytes for other things.
    if &h[257..263] == b"ustar\0" && !prefix.is_empty() {
        let mut full = prefix.to_vec();
        full.push(b'/');
        full.extend_from_slice(name);
        full
    } else {
        name.to_vec()
    }
}

fn verify_checksum(h: &[u8; BLOCK]) -> Result<(), String> {
    let stored = parse_number(&h[148..156]).map_err(|r| format!("checksum: {r}"))?;
    let (mut unsigned, mut signed) = (0u64, 0i64);
    for (i, &b) in h.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += u64::from(b);
        #[allow(clippy::cast_possible_wrap)] // reason: historic tars sum signed bytes
        let s = i64::from(b as i8);
        signed += s;
    }
    if stored == unsigned || i64::try_from(stored).is_ok_and(|s| s == signed) {
        Ok(())
    } else {
        Err(format!(
            "header checksum mismatch (stored {stored}, computed {unsigned}): not a tar header"
        ))
    }
}

/// A tar numeric field: octal (space/NUL terminated) or GNU base-256.
fn parse_number(field: &[u8]) -> Result<u64, String> {
    if field.first().is_some_and(|&b| b & 0x80 != 0) {
        if field[0] & 0x40 != 0 {
            return Err("negative base-256 number".to_owned());
        }
        let mut v: u64 = u64::from(field[0] & 0x3f);
        for &b in &field[1..] {
            v = v
                .checked_mul(256)
                .and_then(|v| v.checked_add(u64::from(b)))
                .ok_or_else(|| "base-256 number overflows 64 bits".to_owned())?;
        }
        return Ok(v);
    }
    let mut v: u64 = 0;
    let mut digits = field
        .iter()
        .skip_while(|&&b| b == b' ' || b == 0)
        .peekable();
    while let Some(&&b) = digits.peek() {
        if b == b' ' || b == 0 {
            break;
        }
        if !(b'0'..=b'7').contains(&b) {
            return Err(format!("invalid octal digit {:?}", char::from(b)));
        }
        v = v
            .checked_mul(8)
            .and_then(|v| v.checked_add(u64::from(b - b'0')))
            .ok_or_else(|| "octal number overflows 64 bits".to_owned())?;
        digits.next();
    }
    if digits.any(|&b| b != b' ' && b != 0) {
        return Err("garbage after the octal number".to_owned());
    }
    Ok(v)
}

/// The `path` value of a pax extended header (`"<len> path=<value>\n"` records).
fn pax_path(meta: &[u8]) -> Option<&[u8]> {
    let mut rest = meta;
    let mut path = None;
    while !rest.is_empty() {
        let space = rest.iter().position(|&b| b == b' ')?;
        let len: usize = std::str::from_utf8(&rest[..space]).ok()?.parse().ok()?;
        if len <= space || len > rest.len() {
            return None;
        }
        let record = &rest[space + 1..len];
        let record = record.strip_suffix(b"\n").unwrap_or(record);
        if let Some(value) = record.strip_prefix(b"path=") {
            path = Some(value);
        }
        rest = &rest[len..];
    }
    path
}

#[cfg(test)]
mod tests {
    use std::io::Write;

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

    use proptest::prelude::*;

    use super::*;

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
}
