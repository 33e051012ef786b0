//! Durable, checksummed record files under the data dir.
//!
//! Every file is `MAGIC (8) || payload length (u64 LE) || SHA-256(payload) (32) || payload`,
//! written to a temporary file, fsynced, renamed into place, and the directory fsynced. A file
//! whose checksum or length does not match is reported as [`StoreError::Corrupt`] and never used.

use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};

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
}

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
        Ok(Store { root })
    }

    fn round_dir(&self, round: u64) -> PathBuf {
        self.root.join("rounds").join(format!("{round:020}"))
    }

    fn path(&self, key: &RecordKey) -> Result<PathBuf, StoreError> {
        if key.name.is_empty()
            || !key
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
            || key.name.starts_with('.')
        {
            return Err(StoreError::BadName(key.name.clone()));
        }
        Ok(match key.round {
            Some(r) => self.round_dir(r).join(&key.name),
            None => self.root.join("global").join(&key.name),
        })
    }

    /// Durably writes a record (write, fsync, rename, fsync dir).
    pub fn put(&self, key: &RecordKey, payload: &[u8]) -> Result<(), StoreError> {
        self.put_many(&[(key, payload)])
    }

    /// Durably writes several records (a group commit): every temporary file is written,
    /// then each is fsynced (on a journaling filesystem the first fsync usually commits them
    /// all, and the others find nothing left to do), renamed into place, and each directory
    /// fsynced once. When it returns `Ok`, every record is durable; a later record with the
    /// same key replaces an earlier one, as with successive [`Store::put`]s.
    pub fn put_many(&self, records: &[(&RecordKey, &[u8])]) -> Result<(), StoreError> {
        // The last record of each key wins.
        let mut last: std::collections::BTreeMap<&RecordKey, &[u8]> = Default::default();
        for (k, v) in records {
            last.insert(*k, *v);
        }
        // Every name is checked before anything is written.
        let paths = last
            .keys()
            .map(|k| self.path(k))
            .collect::<Result<Vec<_>, _>>()?;
        let mut staged = Vec::with_capacity(last.len());
        for ((key, payload), path) in last.into_iter().zip(paths) {
            let dir = path
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| self.root.clone());
            std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
            let tmp = dir.join(format!(".{}.tmp", key.name));
            let mut f = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
            f.write_all(&record_header(payload)).map_err(io_err(&tmp))?;
            f.write_all(payload).map_err(io_err(&tmp))?;
            staged.push((f, tmp, path, dir));
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

    /// Reads a record; `Ok(None)` if absent, [`StoreError::Corrupt`] if damaged.
    pub fn get(&self, key: &RecordKey) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.path(key)?;
        match std::fs::read(&path) {
            Ok(bytes) => decode_record(&bytes).map(Some).ok_or(StoreError::Corrupt {
                path: path.display().to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Removes a record if present.
    pub fn remove(&self, key: &RecordKey) -> Result<(), StoreError> {
        let path = self.path(key)?;
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Names of the records of `round` (or of the global records), sorted.
    pub fn list(&self, round: Option<u64>) -> Result<Vec<String>, StoreError> {
        let dir = match round {
            Some(r) => self.round_dir(r),
            None => self.root.join("global"),
        };
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
    let mut h = [0u8; HEADER];
    h[..8].copy_from_slice(MAGIC);
    h[8..16].copy_from_slice(&(payload.len() as u64).to_le_bytes());
    h[16..].copy_from_slice(&Sha256::digest(payload));
    h
}

/// The payload of a whole record file, or `None` if its magic, length or checksum is wrong.
/// Allocates only the payload, whose length is that of the input.
pub fn decode_record(bytes: &[u8]) -> Option<Vec<u8>> {
    if bytes.len() < HEADER || &bytes[..8] != MAGIC {
        return None;
    }
    let len = u64::from_le_bytes(bytes[8..16].try_into().ok()?);
    let digest = &bytes[16..48];
    let payload = &bytes[HEADER..];
    if payload.len() as u64 != len || Sha256::digest(payload).as_slice() != digest {
        return None;
    }
    Some(payload.to_vec())
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
        // Flip one payload byte: reported as corrupt, never returned.
        let path = dir
            .path()
            .join("state/rounds/00000000000000000005/write-ab");
        let mut bytes = std::fs::read(&path).map_err(io_err(&path))?;
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, &bytes).map_err(io_err(&path))?;
        assert!(matches!(s.get(&k), Err(StoreError::Corrupt { .. })));
        // Truncation too.
        std::fs::write(&path, &bytes[..10]).map_err(io_err(&path))?;
        assert!(matches!(s.get(&k), Err(StoreError::Corrupt { .. })));
        assert!(matches!(
            s.put(&RecordKey::global("../x"), b""),
            Err(StoreError::BadName(_))
        ));
        s.remove_round(5)?;
        assert!(s.rounds()?.is_empty());
        Ok(())
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
