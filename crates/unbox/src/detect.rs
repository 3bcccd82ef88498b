//! Format detection: Wasm, gzip or tar, from the first bytes of a stream.

use wasm_cache_core::{WASM_MAGIC, check_wasm_header};

use crate::gzip::Gunzip;
use crate::tar::TarParser;
use crate::{Stage, UnboxError};

/// The gzip magic (RFC 1952).
pub(crate) const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// Bytes needed to tell a tar: "ustar" at 257..262 of the first header.
const DETECT_LEN: usize = 262;

/// Tells the format from the first bytes: `None` while undecided.
pub(crate) fn decide(buf: &[u8], outer: bool, at_end: bool) -> Result<Option<Stage>, UnboxError> {
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
