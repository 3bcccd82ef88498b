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

/// Writes `parts` to stdout in order, through one large buffer (no copy of
/// them all first), then flushes; a closed pipe ends the process quietly.
pub(crate) fn write_out_all<'a>(parts: impl Iterator<Item = &'a [u8]>) {
    use std::io::Write;
    let stdout = std::io::stdout().lock();
    // Into a pipe (a script, `jq`), tens of megabytes go 64 KiB at a time by
    // default, a context switch each; a larger pipe where the system allows
    // it (best effort: not a pipe, or over the limit, changes nothing).
    let _ = rustix::pipe::fcntl_setpipe_size(&stdout, 1 << 20);
    let mut out = std::io::BufWriter::with_capacity(1 << 20, stdout);
    let mut written = Ok(());
    for part in parts {
        written = out.write_all(part);
        if written.is_err() {
            break;
        }
    }
    stdout_result(written.and_then(|()| out.flush()));
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

/// One module of `list`: where its sort key (the redacted name, in a buffer
/// of names, then the checksum) and its rendered line are.
struct ListRow {
    name: std::ops::Range<usize>,
    checksum: wasm_cache_core::Sha256Digest,
    line: std::ops::Range<usize>,
}

impl ListRow {
    /// By (name, checksum): the order of the hex strings. `names` is the
    /// buffer of the row's part.
    fn key<'a>(&'a self, names: &'a [u8]) -> (&'a [u8], &'a wasm_cache_core::Sha256Digest) {
        (&names[self.name.clone()], &self.checksum)
    }
}

/// Some of `list`'s modules, rendered and sorted: their lines, one after
/// the other, in one buffer, their sort keys' names in another.
#[derive(Default)]
pub(crate) struct ListPart {
    names: Vec<u8>,
    lines: Vec<u8>,
    rows: Vec<ListRow>,
}

impl ListPart {
    fn push(&mut self, render: &mut ListRender, e: &wasm_cache_core::EntryRef<'_>) {
        let name = wasm_cache_core::redacted_url(&e.key.name);
        let (name_at, line_at) = (self.names.len(), self.lines.len());
        self.names.extend_from_slice(name.as_bytes());
        render.line(&mut self.lines, &name, e);
        self.rows.push(ListRow {
            name: name_at..self.names.len(),
            checksum: e.key.checksum,
            line: line_at..self.lines.len(),
        });
    }

    /// Row `i`'s sort key ([`ListRow::key`]).
    fn key(&self, i: usize) -> (&[u8], &wasm_cache_core::Sha256Digest) {
        self.rows[i].key(&self.names)
    }

    fn sort(&mut self) {
        let names = &self.names;
        self.rows
            .sort_unstable_by(|a, b| a.key(names).cmp(&b.key(names)));
    }

    /// How many modules.
    pub(crate) fn len(&self) -> usize {
        self.rows.len()
    }
}

/// Entries per rendering thread, at least: below that, a thread's start
/// costs more than it saves.
const LIST_ENTRIES_PER_THREAD: usize = 8192;

/// Renders every entry of `refs`, in parts each sorted, on as many threads
/// as the machine has cores (at most 8, and one for a small cache): with
/// 100,000 modules, rendering was a quarter of `list`'s time, on one core of
/// two while the other idled (issue 19).
pub(crate) fn render_list(
    refs: &wasm_cache_core::EntryRefs<'_>,
    render: &ListRender,
) -> Vec<ListPart> {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    render_parts(refs, render, cores, LIST_ENTRIES_PER_THREAD)
}

fn render_parts(
    refs: &wasm_cache_core::EntryRefs<'_>,
    render: &ListRender,
    cores: usize,
    per_thread: usize,
) -> Vec<ListPart> {
    let n = refs.len();
    let threads = cores.min(n.div_ceil(per_thread)).clamp(1, 8);
    let chunk = n.div_ceil(threads);
    let part = |t: usize| {
        let mut render = render.clone();
        let mut part = ListPart::default();
        for e in refs.range((t * chunk).min(n)..((t + 1) * chunk).min(n)) {
            part.push(&mut render, &e);
        }
        part.sort();
        part
    };
    if threads == 1 {
        return vec![part(0)];
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads).map(|t| s.spawn(move || part(t))).collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}

/// Writes `header` then the lines of `parts` merged in sort order.
pub(crate) fn write_list(header: &[u8], parts: &[ListPart]) {
    write_out_all(std::iter::once(header).chain(merged(parts)));
}

/// The lines of `parts` (each sorted) in sort order.
fn merged(parts: &[ListPart]) -> impl Iterator<Item = &[u8]> {
    let mut next = vec![0usize; parts.len()];
    std::iter::from_fn(move || {
        let p = (0..parts.len())
            .filter(|&p| next[p] < parts[p].rows.len())
            .min_by(|&a, &b| parts[a].key(next[a]).cmp(&parts[b].key(next[b])))?;
        let row = &parts[p].rows[next[p]];
        next[p] += 1;
        Some(&parts[p].lines[row.line.clone()])
    })
}

/// Renders `list` lines, text or `--json` (documented in docs/CLI.md: one
/// object per line, fields in this order), straight into a byte buffer.
#[derive(Clone)]
pub(crate) struct ListRender {
    json: bool,
    /// The module directory with its trailing `/`, as a JSON string's
    /// contents (escaped) for `--json`.
    dir: Vec<u8>,
    /// The last `last_use` rendered, by its second: a cache's entries share
    /// few distinct seconds.
    last_use: (u64, String),
}

impl ListRender {
    pub(crate) fn new(cache: &wasm_cache::Cache, json: bool) -> Self {
        // Every module's path is this directory and its file name (see
        // `Cache::module_path`), so the directory is escaped once.
        let sample = cache
            .module_path(&wasm_cache_core::Sha256Digest::default())
            .display()
            .to_string();
        let prefix = sample
            .strip_suffix(
                wasm_cache_core::Sha256Digest::default()
                    .file_name()
                    .as_str(),
            )
            .unwrap_or_default();
        Self::in_dir(prefix, json)
    }

    /// Lines of modules whose files are in `prefix` (with its trailing `/`).
    fn in_dir(prefix: &str, json: bool) -> Self {
        let mut dir = Vec::new();
        json_str(&mut dir, prefix);
        // The contents only, without the quotes.
        dir.pop();
        dir.remove(0);
        Self {
            json,
            dir,
            last_use: (u64::MAX, String::new()),
        }
    }

    fn last_use(&mut self, at: wasm_cache_core::Timestamp) -> &str {
        use std::fmt::Write as _;
        let second = at.0 / 1000;
        if self.last_use.0 != second {
            self.last_use.1.clear();
            let _ = write!(
                self.last_use.1,
                "{}",
                humantime::format_rfc3339_seconds(at.to_system_time())
            );
            self.last_use.0 = second;
        }
        &self.last_use.1
    }

    /// Appends the line of `e`, shown by its redacted `name`.
    fn line(&mut self, out: &mut Vec<u8>, name: &str, e: &wasm_cache_core::EntryRef<'_>) {
        use std::fmt::Write as _;
        let checksum = e.key.checksum.file_name_bytes();
        let checksum = &checksum[..64];
        if !self.json {
            let last_use = self.last_use(e.last_use);
            let mut w = Utf8(out);
            let checksum = std::str::from_utf8(checksum).unwrap_or_default();
            let _ = write!(w, "{checksum:<64}  {:>10}  {last_use:<20}  ", size(e.size));
            if e.urls.is_empty() {
                let _ = writeln!(w, "{name}");
            } else {
                for (i, u) in e.urls.iter().enumerate() {
                    let sep = if i == 0 { "" } else { ", " };
                    let _ = write!(w, "{sep}{}", wasm_cache_core::redacted_url(u));
                }
                let _ = writeln!(w);
            }
            return;
        }
        let file = e.content.file_name_bytes();
        out.extend_from_slice(b"{\"schema\":");
        let _ = write!(Utf8(out), "{SCHEMA}");
        out.extend_from_slice(b",\"name\":");
        json_str(out, name);
        out.extend_from_slice(b",\"checksum\":\"");
        out.extend_from_slice(checksum);
        out.extend_from_slice(b"\",\"sha256\":\"");
        out.extend_from_slice(&file[..64]);
        out.extend_from_slice(b"\",\"path\":\"");
        out.extend_from_slice(&self.dir);
        out.extend_from_slice(&file);
        let _ = write!(Utf8(out), "\",\"size\":{},\"last_use\":", e.size);
        let last_use = self.last_use(e.last_use);
        json_str(out, last_use);
        let _ = write!(
            Utf8(out),
            ",\"last_use_unix_ms\":{},\"urls\":[",
            e.last_use.0
        );
        for (i, u) in e.urls.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            json_str(out, &wasm_cache_core::redacted_url(u));
        }
        out.extend_from_slice(b"]}\n");
    }
}

/// Appends `s` as a JSON string: copied when nothing in it needs escaping
/// (the common case), else escaped by serde_json.
pub(crate) fn json_str(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        let _ = serde_json::to_writer(&mut *out, s);
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

    /// Lines rendered in parts on several threads and merged come out as one
    /// thread renders and sorts them, whatever the number of parts.
    #[test]
    fn list_parts_merge_into_one_sorted_listing() {
        use wasm_cache_core::{Index, ModuleKey, Sha256Digest, Timestamp};
        let index = Index::new();
        for i in 0..500u32 {
            let content = Sha256Digest::from_bytes([(i % 251) as u8; 32]);
            // Names repeat (a name with several checksums) and some need
            // redacting, which changes their order.
            let url = match i % 5 {
                0 => format!("https://user:pw@h.example/m{}.wasm", i % 37),
                1 => format!("https://h.example/m{}.wasm?token={i}", i % 37),
                _ => format!("https://h.example/m{}.wasm", i % 37),
            };
            let key = ModuleKey::new(url.clone(), Sha256Digest::from_bytes([i as u8; 32]));
            index.insert(
                key,
                content,
                u64::from(i),
                Some(&url),
                Timestamp::from_millis(1_700_000_000_000 + u64::from(i) * 997),
            );
        }
        let refs = index.entry_refs();
        for json in [false, true] {
            let render = ListRender::in_dir("/cache/", json);
            let one = render_parts(&refs, &render, 1, 1);
            assert_eq!(one.len(), 1);
            let want: Vec<&[u8]> = merged(&one).collect();
            assert_eq!(want.len(), refs.len());
            // Sorted by (redacted name, checksum), every line once.
            let keys: Vec<_> = (0..one[0].len()).map(|i| one[0].key(i)).collect();
            assert!(keys.windows(2).all(|w| w[0] <= w[1]));
            for (cores, per_thread) in [(2, 1), (3, 100), (8, 1), (8, 499), (2, 10_000)] {
                let parts = render_parts(&refs, &render, cores, per_thread);
                let expect = cores.min(refs.len().div_ceil(per_thread)).clamp(1, 8);
                assert_eq!(
                    parts.len(),
                    expect,
                    "{cores} cores, {per_thread} per thread"
                );
                let got: Vec<&[u8]> = merged(&parts).collect();
                assert_eq!(
                    got, want,
                    "{cores} cores, {per_thread} per thread, json {json}"
                );
            }
            let text = String::from_utf8(want.concat()).unwrap();
            assert!(!text.contains("pw@") && !text.contains("token="), "{text}");
        }
    }

    #[test]
    fn json_strings_are_what_serde_writes() {
        for s in [
            "",
            "plain https://h.example/m.wasm",
            "quote \" and backslash \\",
            "controls \n\t\r\u{1}\u{1f}\u{7f}",
            "unicode é 漢 \u{1F600}",
        ] {
            let mut ours = Vec::new();
            json_str(&mut ours, s);
            assert_eq!(ours, serde_json::to_vec(s).unwrap(), "{s:?}");
        }
    }

    #[test]
    fn the_json_section_is_found() {
        let doc = json_doc();
        assert!(doc.starts_with("## JSON outputs"), "{doc}");
        assert!(doc.contains("### verify --json"));
    }
}
