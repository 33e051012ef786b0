//! Durable, checksummed record files under the data dir.
//!
//! Every file is `MAGIC (8) || payload length (u64 LE) || SHA-256(payload) (32) || payload`,
//! written to a temporary file, fsynced, renamed into place, and the directory fsynced. A file
//! whose checksum or length does not match is reported as [`StoreError::Corrupt`] and never used.
//!
//! A global record is a file of its own (`global/<name>`). The records of a round are written
//! a group commit at a time: one *batch file* per round per commit
//! (`rounds/<round>/<seq>.batch`, `seq` increasing over the store's life) whose payload is the
//! batch's entries, `name length (u16 LE) || name || length (u64 LE) || bytes` each. A round
//! of 1,000 clients then costs tens of files instead of thousands (creating and deleting that
//! many inodes per round was about 15% of the servers' CPU time under load), and a batch is
//! atomic: all of its records or none.

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

const MAGIC: &[u8; 8] = b"MPMREC1\0";
/// Length of a record file's header.
pub const HEADER: usize = 8 + 8 + 32;

/// Where one record lives, relative to the state directory.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordKey {
    /// The round the record belongs to, or `None` for global records (accounts, invites).
    pub round: Option<u64>,
    /// The file name (ASCII, no separators).
    pub name: String,
}

impl RecordKey {
    /// A record of `round`.
    pub fn round(round: u64, name: impl Into<String>) -> RecordKey {
        RecordKey {
            round: Some(round),
            name: name.into(),
        }
    }
    /// A global record.
    pub fn global(name: impl Into<String>) -> RecordKey {
        RecordKey {
            round: None,
            name: name.into(),
        }
    }
}

/// Storage failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A file operation failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A file's checksum or framing is wrong.
    #[error("corrupted record {path}")]
    Corrupt {
        /// The file.
        path: String,
    },
    /// A record name is not a plain file name.
    #[error("invalid record name {0:?}")]
    BadName(String),
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    /// The next batch file's sequence number (above every one on disk).
    next_seq: Arc<AtomicU64>,
}

/// The records of one round read back from its batch files.
#[derive(Debug, Default)]
pub struct RoundRecords {
    /// The newest record of each name, in name order.
    pub records: BTreeMap<String, Vec<u8>>,
    /// Batch files that failed their checksum or framing (their records are not used).
    pub corrupt: Vec<String>,
}

const BATCH_SUFFIX: &str = ".batch";

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl Store {
    /// Opens (creating) `data_dir/state`.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        let root = data_dir.join("state");
        for sub in ["global", "rounds"] {
            let p = root.join(sub);
            std::fs::create_dir_all(&p).map_err(io_err(&p))?;
        }
        let store = Store {
            root,
            next_seq: Arc::new(AtomicU64::new(0)),
        };
        let mut next = 0;
        for round in store.rounds()? {
            for (seq, _) in store.batch_files(round)?.0 {
                next = next.max(seq + 1);
            }
        }
        store.next_seq.store(next, Ordering::Relaxed);
        Ok(store)
    }

    /// A round's batch files in sequence order, and the other (unexpected) files in its
    /// directory. Temporary files (a crash between write and rename) are skipped.
    #[allow(clippy::type_complexity)]
    fn batch_files(&self, round: u64) -> Result<(Vec<(u64, PathBuf)>, Vec<PathBuf>), StoreError> {
        let dir = self.round_dir(round);
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Default::default()),
            Err(e) => return Err(io_err(&dir)(e)),
        };
        let (mut batches, mut other) = (Vec::new(), Vec::new());
        for entry in rd {
            let entry = entry.map_err(io_err(&dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                other.push(entry.path());
                continue;
            };
            if name.starts_with('.') {
                continue;
            }
            match name
                .strip_suffix(BATCH_SUFFIX)
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|n| n.parse::<u64>().ok())
            {
                Some(seq) => batches.push((seq, entry.path())),
                None => other.push(entry.path()),
            }
        }
        batches.sort_unstable();
        Ok((batches, other))
    }

    fn round_dir(&self, round: u64) -> PathBuf {
        self.root.join("rounds").join(format!("{round:020}"))
    }

    fn path(&self, key: &RecordKey) -> Result<PathBuf, StoreError> {
        check_name(&key.name)?;
        Ok(match key.round {
            Some(r) => self.round_dir(r).join(&key.name),
            None => self.root.join("global").join(&key.name),
        })
    }

    /// Durably writes a record (write, fsync, rename, fsync dir).
    pub fn put(&self, key: &RecordKey, payload: &[u8]) -> Result<(), StoreError> {
        self.put_many(&[(key, payload)])
    }

    /// Durably writes several records (a group commit): each global record to its own
    /// temporary file, the records of each round to one new batch file; then every file is
    /// fsynced (on a journaling filesystem the first fsync usually commits them all), renamed
    /// into place, and each directory fsynced once. When it returns `Ok`, every record is
    /// durable; a later record with the same key replaces an earlier one, as with successive
    /// [`Store::put`]s.
    pub fn put_many(&self, records: &[(&RecordKey, &[u8])]) -> Result<(), StoreError> {
        // Every name is checked before anything is written.
        for (k, _) in records {
            check_name(&k.name)?;
        }
        // The last record of each key wins.
        let mut global: BTreeMap<&str, &[u8]> = BTreeMap::new();
        let mut rounds: BTreeMap<u64, BTreeMap<&str, &[u8]>> = BTreeMap::new();
        for (k, v) in records {
            match k.round {
                Some(r) => rounds.entry(r).or_default().insert(&k.name, v),
                None => global.insert(&k.name, v),
            };
        }
        // Each file is written part by part (no copy of a large payload).
        let mut staged = Vec::new();
        for (name, payload) in global {
            staged.push(self.stage(self.root.join("global").join(name), &[payload])?);
        }
        for (round, entries) in &rounds {
            let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
            let path = self
                .round_dir(*round)
                .join(format!("{seq:020}{BATCH_SUFFIX}"));
            let headers: Vec<Vec<u8>> = entries
                .iter()
                .map(|(n, v)| entry_header(n, v.len()))
                .collect();
            let parts: Vec<&[u8]> = headers
                .iter()
                .zip(entries.values())
                .flat_map(|(h, v)| [h.as_slice(), *v])
                .collect();
            staged.push(self.stage(path, &parts)?);
        }
        for (f, tmp, _, _) in &staged {
            f.sync_all().map_err(io_err(tmp))?;
        }
        let mut dirs = std::collections::BTreeSet::new();
        for (_, tmp, path, dir) in &staged {
            std::fs::rename(tmp, path).map_err(io_err(path))?;
            dirs.insert(dir.clone());
        }
        for dir in dirs {
            std::fs::File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err(&dir))?;
        }
        Ok(())
    }

    /// Writes `record_header(parts) || parts` to a temporary file beside `path` (not yet
    /// fsynced or renamed): (file, temporary path, final path, directory).
    fn stage(
        &self,
        path: PathBuf,
        parts: &[&[u8]],
    ) -> Result<(std::fs::File, PathBuf, PathBuf, PathBuf), StoreError> {
        let dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| self.root.clone());
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("record");
        let tmp = dir.join(format!(".{name}.tmp"));
        let mut f = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(&parts_header(parts)).map_err(io_err(&tmp))?;
        for part in parts {
            f.write_all(part).map_err(io_err(&tmp))?;
        }
        Ok((f, tmp, path, dir))
    }

    /// Reads every record of `round`: the batch files in the order they were written, the
    /// newest record of each name winning. A batch file (or any other file) that does not
    /// decode is listed in [`RoundRecords::corrupt`] and its records are not used.
    pub fn load_round(&self, round: u64) -> Result<RoundRecords, StoreError> {
        let (batches, other) = self.batch_files(round)?;
        let mut out = RoundRecords {
            corrupt: other.iter().map(|p| p.display().to_string()).collect(),
            ..Default::default()
        };
        for (_, path) in batches {
            let bytes = std::fs::read(&path).map_err(io_err(&path))?;
            // The file and one copy of its records are in memory at once, not more.
            match record_payload(&bytes).and_then(decode_batch) {
                Some(entries) => out.records.extend(entries),
                None => out.corrupt.push(path.display().to_string()),
            }
        }
        Ok(out)
    }

    /// Reads a record; `Ok(None)` if absent, [`StoreError::Corrupt`] if damaged (for a round
    /// record: if any of the round's batch files is; start-up uses [`Store::load_round`]).
    pub fn get(&self, key: &RecordKey) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.path(key)?;
        if let Some(round) = key.round {
            let mut r = self.load_round(round)?;
            if let Some(path) = r.corrupt.pop() {
                return Err(StoreError::Corrupt { path });
            }
            return Ok(r.records.remove(&key.name));
        }
        match std::fs::read(&path) {
            Ok(bytes) => decode_record(&bytes).map(Some).ok_or(StoreError::Corrupt {
                path: path.display().to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Names of the records of `round` (or of the global records), sorted.
    pub fn list(&self, round: Option<u64>) -> Result<Vec<String>, StoreError> {
        if let Some(r) = round {
            return Ok(self.load_round(r)?.records.into_keys().collect());
        }
        let dir = self.root.join("global");
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&dir)(e)),
        };
        let mut out = Vec::new();
        for entry in rd {
            let entry = entry.map_err(io_err(&dir))?;
            if let Some(name) = entry.file_name().to_str()
                && !name.starts_with('.')
            {
                out.push(name.to_string());
            }
        }
        out.sort();
        Ok(out)
    }

    /// Rounds that have a directory, ascending.
    pub fn rounds(&self) -> Result<Vec<u64>, StoreError> {
        let dir = self.root.join("rounds");
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
            let entry = entry.map_err(io_err(&dir))?;
            if let Some(r) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u64>().ok())
            {
                out.push(r);
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Deletes everything of `round`.
    pub fn remove_round(&self, round: u64) -> Result<(), StoreError> {
        let dir = self.round_dir(round);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&dir)(e)),
        }
    }
}

/// Bytes of a record file's header: `MAGIC || payload length (u64 LE) || SHA-256(payload)`. A
/// record file is this header followed by the payload.
pub fn record_header(payload: &[u8]) -> [u8; HEADER] {
    parts_header(&[payload])
}

/// `record_header(payload) || payload`.
#[cfg(test)]
fn framed(payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER + payload.len());
    v.extend_from_slice(&record_header(payload));
    v.extend_from_slice(payload);
    v
}

/// [`record_header`] of the concatenation of `parts`.
fn parts_header(parts: &[&[u8]]) -> [u8; HEADER] {
    let mut sha = Sha256::new();
    let mut len = 0u64;
    for p in parts {
        sha.update(p);
        len += p.len() as u64;
    }
    let mut h = [0u8; HEADER];
    h[..8].copy_from_slice(MAGIC);
    h[8..16].copy_from_slice(&len.to_le_bytes());
    h[16..].copy_from_slice(&sha.finalize());
    h
}

/// A batch entry's `name length (u16 LE) || name || length (u64 LE)`.
fn entry_header(name: &str, len: usize) -> Vec<u8> {
    let n = u16::try_from(name.len()).unwrap_or(u16::MAX);
    let mut out = Vec::with_capacity(2 + name.len() + 8);
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(&name.as_bytes()[..usize::from(n)]);
    out.extend_from_slice(&(len as u64).to_le_bytes());
    out
}

/// A batch file's payload: `name length (u16 LE) || name || length (u64 LE) || bytes` per
/// entry, in the given order. Names are record names (checked, short).
pub fn encode_batch<'a>(entries: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, bytes) in entries {
        out.extend_from_slice(&entry_header(name, bytes.len()));
        out.extend_from_slice(bytes);
    }
    out
}

/// The entries of a batch file's payload, or `None` if an entry is cut short, claims more
/// bytes than remain, or has a name that is not a record name. Allocates only what the input
/// holds.
pub fn decode_batch(mut bytes: &[u8]) -> Option<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let (n, rest) = bytes.split_first_chunk::<2>()?;
        let n = usize::from(u16::from_le_bytes(*n));
        let (name, rest) = rest.split_at_checked(n)?;
        let name = std::str::from_utf8(name).ok().filter(|n| valid_name(n))?;
        let (len, rest) = rest.split_first_chunk::<8>()?;
        let len = usize::try_from(u64::from_le_bytes(*len)).ok()?;
        let (value, rest) = rest.split_at_checked(len)?;
        out.push((name.to_string(), value.to_vec()));
        bytes = rest;
    }
    Some(out)
}

/// [`valid_name`] and at most 255 bytes, or [`StoreError::BadName`].
fn check_name(name: &str) -> Result<(), StoreError> {
    match valid_name(name) && name.len() <= 255 {
        true => Ok(()),
        false => Err(StoreError::BadName(name.to_string())),
    }
}

/// A record name: non-empty ASCII letters, digits, `-`, `_` and `.`, not starting with `.`.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !name.starts_with('.')
}

/// The payload of a whole record file, or `None` if its magic, length or checksum is wrong.
/// Allocates only the payload, whose length is that of the input.
pub fn decode_record(bytes: &[u8]) -> Option<Vec<u8>> {
    record_payload(bytes).map(<[u8]>::to_vec)
}

/// [`decode_record`] without the copy: the payload inside `bytes`.
fn record_payload(bytes: &[u8]) -> Option<&[u8]> {
    if bytes.len() < HEADER || &bytes[..8] != MAGIC {
        return None;
    }
    let len = u64::from_le_bytes(bytes[8..16].try_into().ok()?);
    let digest = &bytes[16..48];
    let payload = &bytes[HEADER..];
    if payload.len() as u64 != len || Sha256::digest(payload).as_slice() != digest {
        return None;
    }
    Some(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_commit_writes_every_record_and_the_last_of_a_key_wins() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(io_err(Path::new("tmp")))?;
        let s = Store::open(dir.path())?;
        let (a, b, g) = (
            RecordKey::round(1, "write-1"),
            RecordKey::round(2, "write-2"),
            RecordKey::global("accounts"),
        );
        s.put_many(&[
            (&a, b"first".as_slice()),
            (&b, b"two".as_slice()),
            (&g, b"global".as_slice()),
            (&a, b"second".as_slice()),
        ])?;
        assert_eq!(s.get(&a)?, Some(b"second".to_vec()));
        assert_eq!(s.get(&b)?, Some(b"two".to_vec()));
        assert_eq!(s.get(&g)?, Some(b"global".to_vec()));
        assert_eq!(s.list(Some(1))?, vec!["write-1".to_string()]);
        // A bad name anywhere in the batch writes nothing.
        let bad = RecordKey::round(3, "../x");
        let c = RecordKey::round(3, "write-3");
        assert!(matches!(
            s.put_many(&[(&c, b"c".as_slice()), (&bad, b"x".as_slice())]),
            Err(StoreError::BadName(_))
        ));
        assert_eq!(s.get(&c)?, None);
        Ok(())
    }

    #[test]
    fn round_trip_corruption_and_names() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(io_err(Path::new("tmp")))?;
        let s = Store::open(dir.path())?;
        let k = RecordKey::round(5, "write-ab");
        assert_eq!(s.get(&k)?, None);
        s.put(&k, b"hello")?;
        assert_eq!(s.get(&k)?, Some(b"hello".to_vec()));
        assert_eq!(s.rounds()?, vec![5]);
        assert_eq!(s.list(Some(5))?, vec!["write-ab".to_string()]);
        // Flip one payload byte of the round's batch file: reported as corrupt, never returned.
        let dir = dir.path().join("state/rounds/00000000000000000005");
        let path = dir.join("00000000000000000000.batch");
        let mut bytes = std::fs::read(&path).map_err(io_err(&path))?;
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, &bytes).map_err(io_err(&path))?;
        assert!(matches!(s.get(&k), Err(StoreError::Corrupt { .. })));
        // Truncation too.
        std::fs::write(&path, &bytes[..10]).map_err(io_err(&path))?;
        assert!(matches!(s.get(&k), Err(StoreError::Corrupt { .. })));
        // A stray file in a round directory is reported, a leftover temporary file is not.
        std::fs::write(&path, framed(&encode_batch([("write-ab", &b"hello"[..])])))
            .map_err(io_err(&path))?;
        assert_eq!(s.get(&k)?, Some(b"hello".to_vec()));
        std::fs::write(dir.join(".x.tmp"), b"half").map_err(io_err(&dir))?;
        assert_eq!(s.load_round(5)?.corrupt, Vec::<String>::new());
        std::fs::write(dir.join("write-cd"), b"old layout").map_err(io_err(&dir))?;
        assert_eq!(s.load_round(5)?.corrupt.len(), 1);
        assert!(matches!(
            s.put(&RecordKey::global("../x"), b""),
            Err(StoreError::BadName(_))
        ));
        s.remove_round(5)?;
        assert!(s.rounds()?.is_empty());
        Ok(())
    }

    #[test]
    fn a_round_is_read_back_from_its_batches_in_order_and_a_bad_batch_is_reported()
    -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(io_err(Path::new("tmp")))?;
        let s = Store::open(dir.path())?;
        let (x, y, z) = (
            RecordKey::round(7, "x"),
            RecordKey::round(7, "y"),
            RecordKey::round(7, "z"),
        );
        s.put_many(&[(&x, b"x1".as_slice()), (&y, b"y1".as_slice())])?;
        s.put_many(&[(&x, b"x2".as_slice())])?;
        s.put_many(&[(&z, b"z1".as_slice())])?;
        let r = s.load_round(7)?;
        let got: Vec<(&str, &[u8])> = r
            .records
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        assert_eq!(got, [("x", &b"x2"[..]), ("y", b"y1"), ("z", b"z1")]);
        assert!(r.corrupt.is_empty());
        // Reopening continues the sequence: a later batch still wins.
        let s = Store::open(dir.path())?;
        s.put(&y, b"y2")?;
        assert_eq!(s.get(&y)?, Some(b"y2".to_vec()));
        // The second batch is damaged: the others are still read, and it is reported.
        let path = dir
            .path()
            .join("state/rounds/00000000000000000007/00000000000000000001.batch");
        std::fs::write(&path, b"garbage").map_err(io_err(&path))?;
        let r = s.load_round(7)?;
        assert_eq!(r.corrupt, vec![path.display().to_string()]);
        assert_eq!(r.records.get("x").map(Vec::as_slice), Some(&b"x1"[..]));
        Ok(())
    }

    #[test]
    fn batch_entries_are_bounded_and_every_truncation_is_refused() {
        let entries = [("write-1", &[1u8; 40][..]), ("commit-1", b""), ("a", b"z")];
        let bytes = encode_batch(entries);
        let back = decode_batch(&bytes).expect("decodes");
        assert_eq!(back.len(), 3);
        for ((n, v), (bn, bv)) in entries.iter().zip(&back) {
            assert_eq!((*n, *v), (bn.as_str(), bv.as_slice()));
        }
        assert_eq!(
            encode_batch(back.iter().map(|(n, v)| (n.as_str(), v.as_slice()))),
            bytes
        );
        // Every cut that is not an entry boundary is refused.
        let boundaries = [0, 2 + 7 + 8 + 40, 2 + 7 + 8 + 40 + 2 + 8 + 8, bytes.len()];
        for cut in 0..bytes.len() {
            assert_eq!(
                decode_batch(&bytes[..cut]).is_some(),
                boundaries.contains(&cut),
                "cut at {cut}"
            );
        }
        // A length claim beyond the input, and a name that is not a record name.
        let mut lying = encode_batch([("x", &b"abc"[..])]);
        lying[3..11].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(decode_batch(&lying), None);
        assert_eq!(decode_batch(&encode_batch([("../x", &b""[..])])), None);
        assert_eq!(decode_batch(&encode_batch([("", &b""[..])])), None);
    }

    #[test]
    fn record_framing_is_exact() {
        for payload in [&b""[..], b"x", &[7u8; 300]] {
            let mut file = record_header(payload).to_vec();
            file.extend_from_slice(payload);
            assert_eq!(decode_record(&file).as_deref(), Some(payload));
            // A byte more or less, or a changed length field, is corruption.
            let mut longer = file.clone();
            longer.push(0);
            assert_eq!(decode_record(&longer), None);
            assert_eq!(decode_record(&file[..file.len() - 1]), None);
            let mut lying = file.clone();
            lying[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
            assert_eq!(decode_record(&lying), None);
        }
    }
}
