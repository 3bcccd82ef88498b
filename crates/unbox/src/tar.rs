//! A streaming tar reader that forwards one entry's content to the output.
//!
//! ustar, GNU (long names `L`, base-256 sizes) and pax (`path` records); every
//! other entry type is skipped by counting bytes.

use wasm_cache_core::{ModuleSink, WASM_MAGIC};

use crate::{BLOCK, Ctx, MAX_META_SIZE, TarEntryRule, UnboxError};

const PLUGIN_WASM: &[u8] = b"plugin.wasm";

/// A streaming tar reader that forwards one entry's content to the output.
pub(crate) struct TarParser {
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
    pub(crate) fn new() -> Self {
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

    pub(crate) fn push<S: ModuleSink>(
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

    pub(crate) fn finish(&mut self, rule: TarEntryRule) -> Result<(), UnboxError> {
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
pub(crate) fn parse_number(field: &[u8]) -> Result<u64, String> {
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
pub(crate) fn pax_path(meta: &[u8]) -> Option<&[u8]> {
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
