//! The `--json` documents (docs/CLI.md, "JSON outputs", is their contract;
//! `wasm-cache json` prints it) and the size and URL formatting of the text outputs.

use serde::Serialize;

/// Version of every JSON document; fields are only added within a version.
pub(crate) const SCHEMA: u32 = 1;

/// docs/CLI.md, whose "JSON outputs" section `wasm-cache json` prints.
const CLI_MD: &str = include_str!("../../../docs/CLI.md");

/// The "JSON outputs" section of docs/CLI.md.
pub(crate) fn json_doc() -> &'static str {
    let start = CLI_MD
        .find("<!-- json:begin -->")
        .map_or(0, |i| i + "<!-- json:begin -->".len());
    let end = CLI_MD.find("<!-- json:end -->").unwrap_or(CLI_MD.len());
    CLI_MD[start..end].trim()
}

/// Prints one JSON object on one line.
pub(crate) fn line<T: Serialize>(doc: &T) -> Result<(), serde_json::Error> {
    say(format_args!("{}", serde_json::to_string(doc)?));
    Ok(())
}

/// Writes one line on stdout. A reader that went away (`wasm-cache list |
/// head -1`) ends the process with status 0, as `head` asked for no more; any
/// other write error is reported and ends it with status 1. Results are only
/// printed after the cache was shut down, so nothing is lost.
pub(crate) fn say(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let written = out
        .write_fmt(args)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
    stdout_result(written);
}

/// [`say`] for bytes that carry their own line ends.
pub(crate) fn write_out(bytes: &[u8]) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    stdout_result(out.write_all(bytes).and_then(|()| out.flush()));
}

fn stdout_result(written: std::io::Result<()>) {
    if let Err(e) = written {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: writing to stdout: {e}");
        std::process::exit(1);
    }
}

#[derive(Serialize)]
pub(crate) struct FetchJson {
    pub(crate) schema: u32,
    pub(crate) path: String,
    pub(crate) sha256: String,
    pub(crate) size: u64,
    pub(crate) url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) manifest_digest: Option<String>,
    pub(crate) cached: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) output: Option<String>,
}

#[derive(Serialize)]
pub(crate) struct ResolveJson {
    pub(crate) schema: u32,
    pub(crate) url: String,
    pub(crate) digest: String,
    pub(crate) kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) size: Option<u64>,
}

/// One line of `list --json`, borrowed from the entry it shows.
#[derive(Serialize)]
pub(crate) struct ModuleJson<'a> {
    pub(crate) schema: u32,
    pub(crate) name: &'a str,
    pub(crate) checksum: &'a str,
    pub(crate) sha256: &'a str,
    pub(crate) path: &'a str,
    pub(crate) size: u64,
    pub(crate) last_use: &'a str,
    pub(crate) last_use_unix_ms: u64,
    pub(crate) urls: RedactedUrls<'a>,
}

/// An entry's URLs as a JSON array, each redacted, without a copy of those
/// that hide nothing.
pub(crate) struct RedactedUrls<'a>(pub(crate) &'a std::collections::BTreeSet<String>);

impl Serialize for RedactedUrls<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(
            self.0
                .iter()
                .map(|u| wasm_cache_core::redacted_url(u.as_str())),
        )
    }
}

/// `fmt::Write` into a byte buffer (which then holds UTF-8 only).
pub(crate) struct Utf8<'a>(pub(crate) &'a mut Vec<u8>);

impl std::fmt::Write for Utf8<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

#[derive(Serialize)]
pub(crate) struct PurgeJson {
    pub(crate) schema: u32,
    pub(crate) removed: Vec<RemovedJson>,
    pub(crate) kept: Vec<KeptJson>,
    pub(crate) files_removed: usize,
    pub(crate) failures: usize,
}

#[derive(Serialize)]
pub(crate) struct RemovedJson {
    pub(crate) name: String,
    pub(crate) checksum: String,
    pub(crate) reason: &'static str,
}

#[derive(Serialize)]
pub(crate) struct KeptJson {
    pub(crate) name: String,
    pub(crate) checksum: String,
    pub(crate) size: u64,
}

#[derive(Serialize)]
pub(crate) struct VerifyJson {
    pub(crate) schema: u32,
    pub(crate) verified: usize,
    pub(crate) ok: Vec<String>,
    pub(crate) corrupt: Vec<CorruptJson>,
    pub(crate) repaired: Vec<String>,
    pub(crate) missing: Vec<String>,
}

#[derive(Serialize)]
pub(crate) struct CorruptJson {
    pub(crate) sha256: String,
    pub(crate) path: String,
    pub(crate) reason: String,
    pub(crate) repaired: bool,
}

/// `64.0 MiB`.
pub(crate) fn size(bytes: u64) -> String {
    bytesize::ByteSize(bytes).display().iec().to_string()
}

/// Parses `--max-size` / `--max-bytes`: bytes, or a number with a unit
/// (`512K`, `1G`, `1.5GiB`; decimal K/M/G, binary Ki/Mi/Gi).
pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if t.starts_with('-') {
        return Err(format!("{s:?} is negative"));
    }
    if let Ok(n) = t.parse::<u64>() {
        return Ok(n);
    }
    t.parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("{e} (examples: 1048576, 512K, 1G, 1.5GiB)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_with_units() {
        assert_eq!(parse_size("1048576"), Ok(1_048_576));
        assert_eq!(parse_size("512K"), Ok(512_000));
        assert_eq!(parse_size("512Ki"), Ok(512 * 1024));
        assert_eq!(parse_size("1G"), Ok(1_000_000_000));
        assert_eq!(parse_size("1gb"), Ok(1_000_000_000));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size("2 MiB"), Ok(2 << 20));
        for bad in ["", "G", "12Q", "-1G", "1.2.3M"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        assert_eq!(size(64 << 20), "64.0 MiB");
    }

    #[test]
    fn the_json_section_is_found() {
        let doc = json_doc();
        assert!(doc.starts_with("## JSON outputs"), "{doc}");
        assert!(doc.contains("### verify --json"));
    }
}
