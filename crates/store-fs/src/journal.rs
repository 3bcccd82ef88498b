//! A crash-safe, append-only journal of small records.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::StoreError;
use crate::store::sync_dir;

/// Suffix of the temporary file [`Journal::compact`] writes.
const COMPACT_SUFFIX: &str = ".compact-tmp";

/// An append-only journal of records of type `T`, one line per record:
///
/// ```text
/// <crc32 of the JSON, 8 lowercase hex> <JSON>\n
/// ```
///
/// [`append`](Self::append) writes one whole line with a single `write` on an
/// `O_APPEND` descriptor, then `fdatasync`s. [`replay`](Self::replay) reads the
/// lines back, skipping any whose checksum or JSON is wrong and a final line
/// without its newline (a torn write), so a crash at any byte of an append
/// loses at most that record. [`compact`](Self::compact) replaces the whole
/// journal atomically.
///
/// `Journal` is `Send + Sync` whatever `T` is; appends and compactions are
/// serialised by an internal lock.
pub struct Journal<T> {
    path: PathBuf,
    state: Mutex<State>,
    _records: PhantomData<fn() -> T>,
}

#[derive(Debug)]
struct State {
    file: File,
    /// Length of the valid prefix: the file is truncated back to it when an
    /// append fails half-way.
    len: u64,
    /// An earlier failed append may have left a partial line after `len`.
    dirty_tail: bool,
}

impl<T> std::fmt::Debug for Journal<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("path", &self.path).finish()
    }
}

/// What [`Journal::replay_report`] read.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Replay<T> {
    /// The intact records, in the order they were appended.
    pub records: Vec<T>,
    /// Complete lines skipped because their checksum, framing or JSON was wrong.
    pub corrupt: usize,
    /// Whether the file ended in a partial line (a torn append), which was ignored.
    pub torn_tail: bool,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn encode<T: Serialize>(path: &Path, record: &T, out: &mut Vec<u8>) -> Result<(), StoreError> {
    let json = serde_json::to_vec(record).map_err(|source| StoreError::Encode {
        path: path.to_path_buf(),
        source,
    })?;
    // serde_json's compact output escapes control characters, so the JSON never
    // holds a raw newline; the check keeps the framing honest regardless.
    debug_assert!(!json.contains(&b'\n'));
    let crc = crc32fast::hash(&json);
    out.extend_from_slice(format!("{crc:08x} ").as_bytes());
    out.extend_from_slice(&json);
    out.push(b'\n');
    Ok(())
}

fn decode<T: DeserializeOwned>(line: &[u8]) -> Option<T> {
    if line.len() < 9 || line[8] != b' ' {
        return None;
    }
    let crc = u32::from_str_radix(std::str::from_utf8(&line[..8]).ok()?, 16).ok()?;
    let json = &line[9..];
    if crc32fast::hash(json) != crc {
        return None;
    }
    serde_json::from_slice(json).ok()
}

/// The length of the longest prefix of `file` that ends with a newline (or 0).
fn complete_prefix_len(file: &mut File, len: u64) -> io::Result<u64> {
    let mut end = len;
    let mut buf = vec![0u8; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let n = usize::try_from(end - start).unwrap_or(buf.len());
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut buf[..n])?;
        if let Some(i) = buf[..n].iter().rposition(|&b| b == b'\n') {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

impl<T: Serialize + DeserializeOwned> Journal<T> {
    /// Opens the journal at `path`, creating it (and fsyncing its directory) if
    /// it does not exist. A leftover temporary file of an interrupted
    /// [`compact`](Self::compact) is deleted, and a torn final line (no newline)
    /// is truncated away so the next append starts on a fresh line; the complete
    /// records before it are untouched.
    ///
    /// # Errors
    /// [`StoreError::Io`] naming the journal if it cannot be created, read or
    /// truncated.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let leftover = compact_temp_path(&path);
        match fs::remove_file(&leftover) {
            Ok(()) => {
                tracing::info!(path = %leftover.display(), "removed temporary file of an interrupted journal compaction")
            }
            // A missing parent directory is reported below, by the open.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) => {}
            Err(e) => {
                return Err(StoreError::io(
                    "removing journal temporary file",
                    &leftover,
                    e,
                ));
            }
        }
        let existed = path.exists();
        let mut file = owner_only(OpenOptions::new().read(true).append(true).create(true))
            .open(&path)
            .map_err(|e| StoreError::io("opening journal", &path, e))?;
        if !existed {
            sync_dir(&dir)?;
        }
        let len = file
            .metadata()
            .map_err(|e| StoreError::io("reading journal metadata", &path, e))?
            .len();
        let valid = complete_prefix_len(&mut file, len)
            .map_err(|e| StoreError::io("reading journal", &path, e))?;
        if valid < len {
            tracing::warn!(path = %path.display(), bytes = len - valid, "truncating a torn record at the end of the journal");
            file.set_len(valid)
                .and_then(|()| file.sync_data())
                .map_err(|e| StoreError::io("truncating torn record in journal", &path, e))?;
        }
        Ok(Self {
            path,
            state: Mutex::new(State {
                file,
                len: valid,
                dirty_tail: false,
            }),
            _records: PhantomData,
        })
    }

    /// The journal file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record and `fdatasync`s: when this returns `Ok`, the record
    /// survives a crash or power loss.
    ///
    /// # Errors
    /// [`StoreError::Encode`] if `record` cannot be serialised;
    /// [`StoreError::Io`] if the write or sync fails (disk full, ...), in which
    /// case the journal is truncated back to its previous length so no partial
    /// line is left before the next record.
    pub fn append(&self, record: &T) -> Result<(), StoreError> {
        let mut line = Vec::with_capacity(128);
        encode(&self.path, record, &mut line)?;
        let mut st = lock(&self.state);
        if st.dirty_tail {
            let len = st.len;
            st.file.set_len(len).map_err(|e| {
                StoreError::io("truncating failed append in journal", &self.path, e)
            })?;
            st.dirty_tail = false;
        }
        let written = st.file.write_all(&line).and_then(|()| st.file.sync_data());
        match written {
            Ok(()) => {
                st.len += line.len() as u64;
                Ok(())
            }
            Err(e) => {
                let len = st.len;
                if st.file.set_len(len).is_err() {
                    st.dirty_tail = true;
                }
                Err(StoreError::io("appending to journal", &self.path, e))
            }
        }
    }

    /// Every intact record, in order (see [`replay_report`](Self::replay_report)).
    ///
    /// # Errors
    /// [`StoreError::Io`] if the journal cannot be read.
    pub fn replay(&self) -> Result<Vec<T>, StoreError> {
        Ok(self.replay_report()?.records)
    }

    /// Reads the journal: every line with a valid checksum and JSON becomes a
    /// record; corrupt lines are skipped and counted; a partial last line is a
    /// torn append and is ignored. Older records are never lost to a bad newer one.
    ///
    /// # Errors
    /// [`StoreError::Io`] if the journal cannot be read.
    pub fn replay_report(&self) -> Result<Replay<T>, StoreError> {
        // Hold the lock so a concurrent append is either wholly seen or not at all.
        let _st = lock(&self.state);
        let file =
            File::open(&self.path).map_err(|e| StoreError::io("opening journal", &self.path, e))?;
        let mut reader = BufReader::new(file);
        let mut replay = Replay {
            records: Vec::new(),
            corrupt: 0,
            torn_tail: false,
        };
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = reader
                .read_until(b'\n', &mut line)
                .map_err(|e| StoreError::io("reading journal", &self.path, e))?;
            if n == 0 {
                break;
            }
            if line.last() != Some(&b'\n') {
                replay.torn_tail = true;
                break;
            }
            line.pop();
            if line.is_empty() {
                continue;
            }
            match decode(&line) {
                Some(r) => replay.records.push(r),
                None => replay.corrupt += 1,
            }
        }
        if replay.corrupt > 0 {
            tracing::warn!(path = %self.path.display(), corrupt = replay.corrupt, "skipped corrupt journal records");
        }
        Ok(replay)
    }

    /// Atomically replaces the journal's content with `records`: they are
    /// written to `<journal>.compact-tmp`, fsynced, renamed over the journal,
    /// and the directory is fsynced. A crash at any point leaves either the old
    /// journal or the new one, never a mix.
    ///
    /// # Errors
    /// [`StoreError::Encode`] or [`StoreError::Io`]; the old journal is then intact.
    pub fn compact(&self, records: &[T]) -> Result<(), StoreError> {
        let mut st = lock(&self.state);
        let temp = compact_temp_path(&self.path);
        let result = self.write_compacted(&temp, records);
        let len = match result {
            Ok(len) => len,
            Err(e) => {
                let _ = fs::remove_file(&temp);
                return Err(e);
            }
        };
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| StoreError::io("reopening journal", &self.path, e))?;
        *st = State {
            file,
            len,
            dirty_tail: false,
        };
        Ok(())
    }

    fn write_compacted(&self, temp: &Path, records: &[T]) -> Result<u64, StoreError> {
        let mut out = owner_only(OpenOptions::new().write(true).create(true).truncate(true))
            .open(temp)
            .map_err(|e| StoreError::io("creating journal temporary file", temp, e))?;
        let mut buf = Vec::with_capacity(64 * 1024);
        let mut len = 0u64;
        for r in records {
            encode(&self.path, r, &mut buf)?;
            if buf.len() >= 64 * 1024 {
                out.write_all(&buf)
                    .map_err(|e| StoreError::io("writing journal temporary file", temp, e))?;
                len += buf.len() as u64;
                buf.clear();
            }
        }
        out.write_all(&buf)
            .and_then(|()| out.sync_all())
            .map_err(|e| StoreError::io("writing journal temporary file", temp, e))?;
        len += buf.len() as u64;
        drop(out);
        fs::rename(temp, &self.path)
            .map_err(|e| StoreError::io("renaming compacted journal into", &self.path, e))?;
        let dir = match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        sync_dir(dir)?;
        Ok(len)
    }

    #[cfg(test)]
    fn replace_file_for_test(&self, file: File) {
        lock(&self.state).file = file;
    }
}

/// Files the journal creates are readable by their owner only: records may
/// hold URLs as given, with credentials in their user-info or query.
fn owner_only(options: &mut OpenOptions) -> &mut OpenOptions {
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(options, 0o600);
    options
}

fn compact_temp_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(COMPACT_SUFFIX);
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    struct Rec {
        n: u32,
        name: String,
    }

    fn rec(n: u32) -> Rec {
        Rec {
            n,
            name: format!("module-{n}\nwith a newline and \"quotes\""),
        }
    }

    #[test]
    fn append_replay_compact_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.journal");
        let j = Journal::<Rec>::open(&path).unwrap();
        assert!(j.replay().unwrap().is_empty());
        for n in 0..10 {
            j.append(&rec(n)).unwrap();
        }
        assert_eq!(j.replay().unwrap(), (0..10).map(rec).collect::<Vec<_>>());
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 10);
        assert!(text.lines().all(|l| l.len() > 9 && l.as_bytes()[8] == b' '));

        j.compact(&[rec(7), rec(8)]).unwrap();
        j.append(&rec(11)).unwrap();
        assert_eq!(j.replay().unwrap(), vec![rec(7), rec(8), rec(11)]);
        assert!(!compact_temp_path(&path).exists());
        drop(j);
        let j = Journal::<Rec>::open(&path).unwrap();
        assert_eq!(j.replay().unwrap(), vec![rec(7), rec(8), rec(11)]);
    }

    /// A torn write of the last record, cut at every byte offset, never loses
    /// an older record, and the next append after reopening is intact.
    #[test]
    fn torn_last_record_at_every_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let j = Journal::<Rec>::open(&path).unwrap();
        for n in 0..5 {
            j.append(&rec(n)).unwrap();
        }
        let before_last = fs::metadata(&path).unwrap().len();
        j.append(&rec(5)).unwrap();
        drop(j);
        let full = fs::read(&path).unwrap();
        let older: Vec<Rec> = (0..5).map(rec).collect();
        for cut in before_last..=full.len() as u64 {
            let p = dir.path().join(format!("cut-{cut}"));
            fs::write(&p, &full[..usize::try_from(cut).unwrap()]).unwrap();
            let j = Journal::<Rec>::open(&p).unwrap();
            let got = j.replay_report().unwrap();
            if cut == full.len() as u64 {
                assert_eq!(got.records, (0..6).map(rec).collect::<Vec<_>>());
                continue;
            }
            assert_eq!(got.records, older, "cut at {cut}");
            assert_eq!(got.corrupt, 0, "cut at {cut}");
            j.append(&rec(99)).unwrap();
            let mut want = older.clone();
            want.push(rec(99));
            assert_eq!(j.replay().unwrap(), want, "append after cut at {cut}");
        }
    }

    /// Without reopening (so without the truncation on open), replay of a file
    /// with a torn tail reports it and keeps everything before it.
    #[test]
    fn replay_reports_torn_tail_and_skips_corrupt_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let j = Journal::<Rec>::open(&path).unwrap();
        for n in 0..4 {
            j.append(&rec(n)).unwrap();
        }
        // Flip one byte of the JSON of record 1: its checksum no longer matches.
        let mut bytes = fs::read(&path).unwrap();
        let second_line = bytes.iter().position(|&b| b == b'\n').unwrap() + 1;
        bytes[second_line + 15] ^= 0x01;
        bytes.extend_from_slice(b"0badc0de {\"n\":");
        fs::write(&path, &bytes).unwrap();
        let got = j.replay_report().unwrap();
        assert_eq!(got.records, vec![rec(0), rec(2), rec(3)]);
        assert_eq!(got.corrupt, 1);
        assert!(got.torn_tail);
        // A line with a valid checksum but the wrong shape is skipped too.
        let json = br#"{"other":1}"#;
        let line = format!(
            "{:08x} {}\n",
            crc32fast::hash(json),
            std::str::from_utf8(json).unwrap()
        );
        let j = Journal::<Rec>::open(&path).unwrap();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(line.as_bytes()).unwrap();
        j.append(&rec(4)).unwrap();
        let got = j.replay_report().unwrap();
        assert_eq!(got.records, vec![rec(0), rec(2), rec(3), rec(4)]);
        assert_eq!(got.corrupt, 2);
        assert!(!got.torn_tail);
    }

    /// Disk full during an append: writing to `/dev/full` makes the kernel
    /// return a real ENOSPC. (No disk can be filled safely in a test, so the
    /// journal's descriptor is swapped for `/dev/full`.) The error names the
    /// journal and the operation, and the records already on disk stay intact.
    #[test]
    fn enospc_on_append_is_clear_and_keeps_older_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let j = Journal::<Rec>::open(&path).unwrap();
        j.append(&rec(1)).unwrap();
        let full = OpenOptions::new().write(true).open("/dev/full").unwrap();
        j.replace_file_for_test(full);
        let err = j.append(&rec(2)).unwrap_err();
        assert!(err.is_no_space(), "{err}");
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!("appending to journal {}: ", path.display())),
            "{msg}"
        );
        assert!(msg.contains("No space left on device"), "{msg}");
        assert_eq!(j.replay().unwrap(), vec![rec(1)]);
    }

    #[test]
    fn open_fails_clearly_when_parent_is_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain");
        fs::write(&file, b"x").unwrap();
        let path = file.join("j");
        let err = Journal::<Rec>::open(&path).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("Not a directory"), "{msg}");
    }

    /// Appends from several threads interleave as whole lines: every record
    /// comes back, each thread's in its own order.
    #[test]
    fn concurrent_appends_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let j = std::sync::Arc::new(Journal::<Rec>::open(dir.path().join("j")).unwrap());
        let threads: Vec<_> = (0..4u32)
            .map(|t| {
                let j = std::sync::Arc::clone(&j);
                std::thread::spawn(move || {
                    for i in 0..50 {
                        j.append(&rec(t * 1000 + i)).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let got: Vec<u32> = j.replay().unwrap().into_iter().map(|r| r.n).collect();
        assert_eq!(got.len(), 200);
        for t in 0..4u32 {
            let mine: Vec<u32> = got.iter().copied().filter(|n| n / 1000 == t).collect();
            assert_eq!(mine, (0..50).map(|i| t * 1000 + i).collect::<Vec<_>>());
        }
    }

    #[test]
    fn leftover_compaction_file_is_removed_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let j = Journal::<Rec>::open(&path).unwrap();
        j.append(&rec(1)).unwrap();
        drop(j);
        fs::write(compact_temp_path(&path), b"half a compaction").unwrap();
        let j = Journal::<Rec>::open(&path).unwrap();
        assert!(!compact_temp_path(&path).exists());
        assert_eq!(j.replay().unwrap(), vec![rec(1)]);
    }
}
