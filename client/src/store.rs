//! The durable local store (SQLite, file mode 0600).
//!
//! Every state change is one transaction ([`Tx`]): a step either happened completely or not at
//! all, so a crash between steps loses nothing and duplicates nothing. In particular:
//!
//! * building a round's write (choosing the fragment, advancing the go-back-N state, recording
//!   the exact request bytes of both halves and the request id) is one transaction that commits
//!   before anything is sent; a restart resends those bytes unchanged;
//! * processing a round's read answers (acks, accepted fragments, reassembled messages into the
//!   inbox) is one transaction, and acks are only ever built from committed state, so a message
//!   is persisted before it is acknowledged;
//! * once a round is final its receipts and request bytes are deleted (they would prove
//!   activity to a third party);
//! * each contact's forward-secrecy state ([`crate::ratchet::Ratchet`]) is one row of
//!   `ratchets`, changed in the same transactions as the writes and reads that use it. The
//!   store runs with `secure_delete = ON` (freed content is overwritten with zeros) and
//!   [`Store::scrub`] truncates the write-ahead log, so deleted keys do not linger in the files.
//!
//! The schema is versioned (`meta.schema`); [`Store::open`] migrates older versions in place.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use zeroize::Zeroizing;

use crate::delivery::{RecvState, SendState};
use crate::error::Error;
use crate::fsutil::{check_private, create_private_file};
use crate::ratchet::{Direction, KeyBlock, Ratchet};
use crate::session::Secret32;

/// The schema this client reads and writes.
pub const SCHEMA_VERSION: i64 = 2;

/// Version 1 of the schema; later versions are reached through [`MIGRATIONS`].
const SCHEMA_V1: &str = "
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
CREATE TABLE contacts (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    public_key BLOB NOT NULL UNIQUE,
    idx INTEGER NOT NULL UNIQUE,
    added_ms INTEGER NOT NULL,
    send_base INTEGER NOT NULL DEFAULT 0,
    send_next INTEGER NOT NULL DEFAULT 0,
    send_high INTEGER NOT NULL DEFAULT 0,
    send_end INTEGER NOT NULL DEFAULT 0,
    send_timer INTEGER,
    recv_expected INTEGER NOT NULL DEFAULT 0,
    recv_partial BLOB NOT NULL DEFAULT x''
);
CREATE TABLE messages (
    id INTEGER PRIMARY KEY,
    contact_id INTEGER NOT NULL REFERENCES contacts(id) ON DELETE CASCADE,
    body BLOB NOT NULL,
    first_seq INTEGER NOT NULL,
    end_seq INTEGER NOT NULL,
    queued_ms INTEGER NOT NULL,
    delivered_round INTEGER
);
CREATE TABLE fragments (
    contact_id INTEGER NOT NULL REFERENCES contacts(id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    message_id INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    data BLOB NOT NULL,
    last INTEGER NOT NULL,
    send_count INTEGER NOT NULL DEFAULT 0,
    last_sent_round INTEGER,
    PRIMARY KEY (contact_id, seq)
);
CREATE TABLE inbox (
    id INTEGER PRIMARY KEY,
    contact_id INTEGER REFERENCES contacts(id) ON DELETE SET NULL,
    sender TEXT NOT NULL,
    sender_key BLOB NOT NULL,
    body BLOB NOT NULL,
    round INTEGER NOT NULL,
    received_ms INTEGER NOT NULL
);
CREATE TABLE rounds (
    round INTEGER PRIMARY KEY,
    request_id BLOB NOT NULL,
    target_contact INTEGER,
    write_a BLOB,
    write_b BLOB,
    read_a BLOB,
    read_b BLOB,
    read_plan BLOB,
    receipt_a BLOB,
    receipt_b BLOB,
    committed_a INTEGER NOT NULL DEFAULT 0,
    committed_b INTEGER NOT NULL DEFAULT 0,
    reads_done INTEGER NOT NULL DEFAULT 0,
    decrypted INTEGER NOT NULL DEFAULT 0,
    accepted INTEGER,
    final INTEGER NOT NULL DEFAULT 0,
    created_ms INTEGER NOT NULL
);
CREATE TABLE links (
    server TEXT PRIMARY KEY,
    up INTEGER NOT NULL,
    last_ok_ms INTEGER,
    last_error TEXT,
    updated_ms INTEGER NOT NULL
);
";

/// `MIGRATIONS[i]` takes the schema from version `i + 1` to `i + 2`.
///
/// Version 2 (forward secrecy): one `ratchets` row per contact. Contacts of a migrated store
/// have no row yet: they are in epoch 0 (the static keys they used so far) and start their
/// first DH step at their next write turn.
const MIGRATIONS: &[&str] = &["
CREATE TABLE ratchets (
    contact_id INTEGER PRIMARY KEY REFERENCES contacts(id) ON DELETE CASCADE,
    epoch INTEGER NOT NULL,
    established INTEGER NOT NULL,
    chain BLOB,
    eph_secret BLOB,
    block BLOB,
    incoming BLOB NOT NULL,
    outgoing BLOB NOT NULL
);
"];

/// Rows of `rounds` kept for `status` after they are final.
pub const ROUND_HISTORY: u64 = 64;

/// A contact as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contact {
    /// Row id.
    pub id: i64,
    /// The user's name for it.
    pub name: String,
    /// X25519 public key.
    pub public_key: [u8; 32],
    /// Index in `[0, c_max)`: read position and write channel.
    pub index: usize,
    /// When it was added (unix ms).
    pub added_ms: u64,
    /// Go-back-N sender state.
    pub send: SendState,
    /// Receiver state.
    pub recv: RecvState,
}

/// A fragment waiting to be sent or acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredFragment {
    /// Sequence number.
    pub seq: u32,
    /// Bytes.
    pub data: Vec<u8>,
    /// Last fragment of its message.
    pub last: bool,
}

/// An outgoing message with its delivery progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingMessage {
    /// Row id.
    pub id: i64,
    /// Contact name.
    pub contact: String,
    /// Text (lossy UTF-8 of the body).
    pub body: Vec<u8>,
    /// Fragments in total.
    pub fragments: u32,
    /// Fragments sent at least once.
    pub fragments_sent: u32,
    /// Fragments acknowledged by the contact.
    pub fragments_acked: u32,
    /// When queued (unix ms).
    pub queued_ms: u64,
    /// Round in which the last ack arrived, once delivered.
    pub delivered_round: Option<u64>,
}

/// A received message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxMessage {
    /// Row id.
    pub id: i64,
    /// The contact's name when it arrived.
    pub sender: String,
    /// The contact's public key.
    pub sender_key: [u8; 32],
    /// The bytes.
    pub body: Vec<u8>,
    /// The round whose read delivered the last fragment.
    pub round: u64,
    /// When it was stored (unix ms).
    pub received_ms: u64,
}

/// A round's persisted write, reads and progress.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RoundRecord {
    /// The round.
    pub round: u64,
    /// The request id of the write.
    pub request_id: Vec<u8>,
    /// Contact written to (`None`: self-pair padding).
    pub target_contact: Option<i64>,
    /// Exact request body of the write to server A (deleted once final).
    pub write_a: Option<Vec<u8>>,
    /// Exact request body of the write to server B (deleted once final).
    pub write_b: Option<Vec<u8>>,
    /// Exact request body of the reads to server A.
    pub read_a: Option<Vec<u8>>,
    /// Exact request body of the reads to server B.
    pub read_b: Option<Vec<u8>>,
    /// Encoded read plan: for each read position, the contact id read (or -1) and the slot.
    pub read_plan: Option<Vec<u8>>,
    /// Receipt from server A.
    pub receipt_a: Option<Vec<u8>>,
    /// Receipt from server B.
    pub receipt_b: Option<Vec<u8>>,
    /// Server A acknowledged our commit.
    pub committed_a: bool,
    /// Server B acknowledged our commit.
    pub committed_b: bool,
    /// The read answers were processed (or the round's reads were given up).
    pub reads_done: bool,
    /// How many of this round's reads decrypted (local information, never sent).
    pub decrypted: u32,
    /// Whether the write is in the round's published accepted set, once known.
    pub accepted: Option<bool>,
    /// Final: receipts and request bytes deleted.
    pub is_final: bool,
    /// When built (unix ms).
    pub created_ms: u64,
}

/// The last known state of the link to a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// `"A"` or `"B"`.
    pub server: String,
    /// The last exchange succeeded.
    pub up: bool,
    /// Last success (unix ms).
    pub last_ok_ms: Option<u64>,
    /// Last error, if the link is down.
    pub last_error: Option<String>,
    /// When this row changed (unix ms).
    pub updated_ms: u64,
}

/// The store.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
}

/// One transaction: dropped without [`Tx::commit`], it changes nothing.
#[derive(Debug)]
pub struct Tx<'a> {
    tx: Transaction<'a>,
}

fn to_i64(v: u64) -> Result<i64, Error> {
    i64::try_from(v).map_err(|_| Error::Corrupt(format!("value {v} out of range")))
}

fn to_u64(v: i64) -> Result<u64, Error> {
    u64::try_from(v).map_err(|_| Error::Corrupt(format!("negative value {v}")))
}

fn to_u32(v: i64) -> Result<u32, Error> {
    u32::try_from(v).map_err(|_| Error::Corrupt(format!("value {v} out of range")))
}

fn key32(v: Vec<u8>) -> Result<[u8; 32], Error> {
    <[u8; 32]>::try_from(v.as_slice())
        .map_err(|_| Error::Corrupt(format!("key of {} bytes", v.len())))
}

impl Store {
    /// Creates a new store at `path` (mode 0600); fails if it exists.
    pub fn create(path: &Path) -> Result<Self, Error> {
        if path.exists() {
            return Err(Error::AlreadyInitialised(path.to_path_buf()));
        }
        drop(create_private_file(path)?);
        let conn = Self::connect(path)?;
        let migrations = MIGRATIONS.concat();
        conn.execute_batch(&format!(
            "BEGIN; {SCHEMA_V1} {migrations}
             INSERT INTO meta (key, value) VALUES ('schema', {SCHEMA_VERSION}); COMMIT;"
        ))?;
        Ok(Self { conn })
    }

    /// Creates a store of schema version 1, as clients before forward secrecy did (tests of
    /// the migration).
    #[cfg(test)]
    pub(crate) fn create_v1(path: &Path) -> Result<(), Error> {
        drop(create_private_file(path)?);
        let conn = Self::connect(path)?;
        conn.execute_batch(&format!(
            "BEGIN; {SCHEMA_V1} INSERT INTO meta (key, value) VALUES ('schema', 1); COMMIT;"
        ))?;
        Ok(())
    }

    /// Opens an existing store, refusing one that others can read and one that fails
    /// SQLite's structural check (a truncated or damaged file is reported, never used).
    pub fn open(path: &Path) -> Result<Self, Error> {
        if !path.exists() {
            return Err(Error::NotInitialised(path.to_path_buf()));
        }
        check_private(path)?;
        let damaged = |e: rusqlite::Error| match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase) => {
                Error::Corrupt(format!("{}: {e}", path.display()))
            }
            _ => Error::Store(e),
        };
        let mut conn = Self::connect(path).map_err(|e| match e {
            Error::Store(e) => damaged(e),
            e => e,
        })?;
        // Every page and index checked (the store is small; this takes milliseconds).
        let problems: Vec<String> = conn
            .prepare("PRAGMA quick_check")
            .and_then(|mut q| q.query_map([], |r| r.get(0))?.collect())
            .map_err(damaged)?;
        if problems != ["ok"] {
            return Err(Error::Corrupt(format!(
                "{}: damaged ({})",
                path.display(),
                problems.join("; ")
            )));
        }
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let version: Option<i64> = tx
            .query_row("SELECT value FROM meta WHERE key = 'schema'", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| Error::Corrupt(format!("{}: no schema version ({e})", path.display())))?;
        match version {
            Some(v) if (1..SCHEMA_VERSION).contains(&v) => {
                for (i, m) in MIGRATIONS.iter().enumerate().skip((v - 1) as usize) {
                    tx.execute_batch(m)?;
                    tx.execute(
                        "UPDATE meta SET value = ?1 WHERE key = 'schema'",
                        [i as i64 + 2],
                    )?;
                }
                tx.commit()?;
            }
            Some(SCHEMA_VERSION) => drop(tx),
            _ => {
                return Err(Error::Corrupt(format!(
                    "store schema {version:?}, this client reads 1 to {SCHEMA_VERSION}"
                )));
            }
        }
        Ok(Self { conn })
    }

    fn connect(path: &Path) -> Result<Connection, Error> {
        let conn = Connection::open(path)?;
        // WAL with synchronous=FULL: a committed transaction survives power loss.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // Deleted and overwritten content (old session keys) is zeroed, not left in free space.
        conn.pragma_update(None, "secure_delete", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        Ok(conn)
    }

    /// Copies the write-ahead log into the database and truncates it to zero bytes, so page
    /// versions holding deleted keys do not stay in the log. Returns `false` if a reader kept
    /// it from completing (the client tries again after the next round).
    pub fn scrub(&mut self) -> Result<bool, Error> {
        let busy: i64 = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
        Ok(busy == 0)
    }

    /// Begins a transaction (IMMEDIATE: a concurrent one-shot command waits for the daemon).
    pub fn tx(&mut self) -> Result<Tx<'_>, Error> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        Ok(Tx { tx })
    }

    /// Runs `f` in one transaction and commits.
    pub fn with_tx<T>(&mut self, f: impl FnOnce(&Tx<'_>) -> Result<T, Error>) -> Result<T, Error> {
        let tx = self.tx()?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }
}

impl Tx<'_> {
    /// Commits the transaction.
    pub fn commit(self) -> Result<(), Error> {
        self.tx.commit()?;
        Ok(())
    }

    /// The connection, for tests that query the database directly.
    #[cfg(test)]
    pub(crate) fn conn(&self) -> &Connection {
        &self.tx
    }

    // ---- meta ----

    /// Reads a u64 from `meta`.
    pub fn meta_u64(&self, key: &str) -> Result<Option<u64>, Error> {
        let v: Option<i64> = self
            .tx
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?;
        v.map(to_u64).transpose()
    }

    /// Writes a u64 to `meta`.
    pub fn set_meta_u64(&self, key: &str, value: u64) -> Result<(), Error> {
        self.tx.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![key, to_i64(value)?],
        )?;
        Ok(())
    }

    // ---- contacts ----

    fn contact_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<ContactRow> {
        Ok(ContactRow {
            id: row.get(0)?,
            name: row.get(1)?,
            public_key: row.get(2)?,
            index: row.get(3)?,
            added_ms: row.get(4)?,
            send: [row.get(5)?, row.get(6)?, row.get(7)?, row.get(8)?],
            timer: row.get(9)?,
            expected: row.get(10)?,
        })
    }

    const CONTACT_COLS: &'static str = "id, name, public_key, idx, added_ms, send_base, send_next, \
         send_high, send_end, send_timer, recv_expected";

    /// All contacts, ordered by index.
    pub fn contacts(&self) -> Result<Vec<Contact>, Error> {
        let mut stmt = self.tx.prepare(&format!(
            "SELECT {} FROM contacts ORDER BY idx",
            Self::CONTACT_COLS
        ))?;
        let rows = stmt.query_map([], Self::contact_from_row)?;
        let mut out = Vec::new();
        for r in rows {
            out.push(r?.into_contact()?);
        }
        Ok(out)
    }

    /// The contact named `name`.
    pub fn contact_by_name(&self, name: &str) -> Result<Contact, Error> {
        self.tx
            .query_row(
                &format!(
                    "SELECT {} FROM contacts WHERE name = ?1",
                    Self::CONTACT_COLS
                ),
                [name],
                Self::contact_from_row,
            )
            .optional()?
            .ok_or_else(|| Error::UnknownContact(name.to_string()))?
            .into_contact()
    }

    /// The contact with row id `id`, if it still exists.
    pub fn contact_by_id(&self, id: i64) -> Result<Option<Contact>, Error> {
        self.tx
            .query_row(
                &format!("SELECT {} FROM contacts WHERE id = ?1", Self::CONTACT_COLS),
                [id],
                Self::contact_from_row,
            )
            .optional()?
            .map(ContactRow::into_contact)
            .transpose()
    }

    /// Adds a contact at `index`. Checks names and keys for duplicates.
    pub fn add_contact(
        &self,
        name: &str,
        public_key: &[u8; 32],
        index: usize,
        now_ms: u64,
    ) -> Result<Contact, Error> {
        if self.contact_by_name(name).is_ok() {
            return Err(Error::DuplicateName(name.to_string()));
        }
        let existing: Option<String> = self
            .tx
            .query_row(
                "SELECT name FROM contacts WHERE public_key = ?1",
                [&public_key[..]],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(n) = existing {
            return Err(Error::DuplicateKey(n));
        }
        self.tx.execute(
            "INSERT INTO contacts (name, public_key, idx, added_ms) VALUES (?1, ?2, ?3, ?4)",
            params![name, &public_key[..], index as i64, to_i64(now_ms)?],
        )?;
        self.contact_by_name(name)
    }

    /// Renames a contact.
    pub fn rename_contact(&self, old: &str, new: &str) -> Result<(), Error> {
        let c = self.contact_by_name(old)?;
        if old != new && self.contact_by_name(new).is_ok() {
            return Err(Error::DuplicateName(new.to_string()));
        }
        self.tx.execute(
            "UPDATE contacts SET name = ?1 WHERE id = ?2",
            params![new, c.id],
        )?;
        Ok(())
    }

    /// Removes a contact with its queued messages; received messages stay in the inbox.
    pub fn remove_contact(&self, name: &str) -> Result<Contact, Error> {
        let c = self.contact_by_name(name)?;
        self.tx
            .execute("DELETE FROM contacts WHERE id = ?1", [c.id])?;
        Ok(c)
    }

    /// Saves a contact's delivery state.
    pub fn set_delivery(
        &self,
        contact_id: i64,
        send: &SendState,
        recv: &RecvState,
    ) -> Result<(), Error> {
        self.tx.execute(
            "UPDATE contacts SET send_base = ?1, send_next = ?2, send_high = ?3, send_end = ?4,
             send_timer = ?5, recv_expected = ?6 WHERE id = ?7",
            params![
                send.base,
                send.next,
                send.high,
                send.end,
                send.timer.map(to_i64).transpose()?,
                recv.expected,
                contact_id
            ],
        )?;
        Ok(())
    }

    /// The partially reassembled incoming message of a contact.
    pub fn partial(&self, contact_id: i64) -> Result<Vec<u8>, Error> {
        Ok(self.tx.query_row(
            "SELECT recv_partial FROM contacts WHERE id = ?1",
            [contact_id],
            |r| r.get(0),
        )?)
    }

    /// Saves the partially reassembled incoming message of a contact.
    pub fn set_partial(&self, contact_id: i64, partial: &[u8]) -> Result<(), Error> {
        self.tx.execute(
            "UPDATE contacts SET recv_partial = ?1 WHERE id = ?2",
            params![partial, contact_id],
        )?;
        Ok(())
    }

    // ---- outgoing messages ----

    /// Queues a message already cut into fragments; returns its id.
    pub fn queue_message(
        &self,
        contact: &Contact,
        body: &[u8],
        fragments: &[(Vec<u8>, bool)],
        now_ms: u64,
    ) -> Result<i64, Error> {
        let mut send = contact.send;
        let n = u32::try_from(fragments.len())
            .map_err(|_| Error::Corrupt("too many fragments".into()))?;
        let seqs = send.enqueue(n)?;
        self.tx.execute(
            "INSERT INTO messages (contact_id, body, first_seq, end_seq, queued_ms)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![contact.id, body, seqs.start, seqs.end, to_i64(now_ms)?],
        )?;
        let msg_id = self.tx.last_insert_rowid();
        for (seq, (data, last)) in seqs.zip(fragments) {
            self.tx.execute(
                "INSERT INTO fragments (contact_id, seq, message_id, data, last)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![contact.id, seq, msg_id, data, *last],
            )?;
        }
        self.set_delivery(contact.id, &send, &contact.recv)?;
        Ok(msg_id)
    }

    /// A queued fragment.
    pub fn fragment(&self, contact_id: i64, seq: u32) -> Result<StoredFragment, Error> {
        self.tx
            .query_row(
                "SELECT data, last FROM fragments WHERE contact_id = ?1 AND seq = ?2",
                params![contact_id, seq],
                |r| {
                    Ok(StoredFragment {
                        seq,
                        data: r.get(0)?,
                        last: r.get(1)?,
                    })
                },
            )
            .optional()?
            .ok_or_else(|| {
                Error::Corrupt(format!("fragment {seq} of contact {contact_id} missing"))
            })
    }

    /// Records that a fragment went into the write of `round`.
    pub fn mark_fragment_sent(&self, contact_id: i64, seq: u32, round: u64) -> Result<(), Error> {
        self.tx.execute(
            "UPDATE fragments SET send_count = send_count + 1, last_sent_round = ?1
             WHERE contact_id = ?2 AND seq = ?3",
            params![to_i64(round)?, contact_id, seq],
        )?;
        Ok(())
    }

    /// Records an ack: fragments below `base` are done; messages fully below it are delivered.
    pub fn acked_below(&self, contact_id: i64, base: u32, round: u64) -> Result<(), Error> {
        self.tx.execute(
            "UPDATE messages SET delivered_round = ?1
             WHERE contact_id = ?2 AND end_seq <= ?3 AND delivered_round IS NULL",
            params![to_i64(round)?, contact_id, base],
        )?;
        // Delivered fragments are no longer needed; the message row keeps the text and state.
        self.tx.execute(
            "DELETE FROM fragments WHERE contact_id = ?1 AND seq < ?2",
            params![contact_id, base],
        )?;
        Ok(())
    }

    /// Outgoing messages, oldest first, with progress.
    pub fn outgoing(&self) -> Result<Vec<OutgoingMessage>, Error> {
        let mut stmt = self.tx.prepare(
            "SELECT m.id, c.name, m.body, m.first_seq, m.end_seq, m.queued_ms, m.delivered_round,
                    c.send_base,
                    (SELECT COUNT(*) FROM fragments f WHERE f.message_id = m.id AND f.send_count > 0)
             FROM messages m JOIN contacts c ON c.id = m.contact_id ORDER BY m.id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Vec<u8>>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, Option<i64>>(6)?,
                r.get::<_, i64>(7)?,
                r.get::<_, i64>(8)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, contact, body, first, end, queued, delivered, base, sent_now) = row?;
            let total = to_u32(end - first)?;
            let acked = to_u32((base.clamp(first, end)) - first)?;
            // Acked fragments were deleted; each was sent at least once.
            let sent = (acked + to_u32(sent_now)?).min(total);
            out.push(OutgoingMessage {
                id,
                contact,
                body,
                fragments: total,
                fragments_sent: sent,
                fragments_acked: acked,
                queued_ms: to_u64(queued)?,
                delivered_round: delivered.map(to_u64).transpose()?,
            });
        }
        Ok(out)
    }

    // ---- inbox ----

    /// Stores a received message.
    pub fn deliver(
        &self,
        contact: &Contact,
        body: &[u8],
        round: u64,
        now_ms: u64,
    ) -> Result<i64, Error> {
        self.tx.execute(
            "INSERT INTO inbox (contact_id, sender, sender_key, body, round, received_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                contact.id,
                contact.name,
                &contact.public_key[..],
                body,
                to_i64(round)?,
                to_i64(now_ms)?
            ],
        )?;
        Ok(self.tx.last_insert_rowid())
    }

    /// Received messages, oldest first; the sender shown is the contact's current name.
    pub fn inbox(&self) -> Result<Vec<InboxMessage>, Error> {
        let mut stmt = self.tx.prepare(
            "SELECT i.id, COALESCE(c.name, i.sender), i.sender_key, i.body, i.round, i.received_ms
             FROM inbox i LEFT JOIN contacts c ON c.id = i.contact_id ORDER BY i.id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Vec<u8>>(2)?,
                r.get::<_, Vec<u8>>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, i64>(5)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, sender, key, body, round, at) = row?;
            out.push(InboxMessage {
                id,
                sender,
                sender_key: key32(key)?,
                body,
                round: to_u64(round)?,
                received_ms: to_u64(at)?,
            });
        }
        Ok(out)
    }

    // ---- rounds ----

    /// Inserts a freshly built round.
    pub fn insert_round(&self, rec: &RoundRecord) -> Result<(), Error> {
        self.tx.execute(
            "INSERT INTO rounds (round, request_id, target_contact, write_a, write_b, read_a,
             read_b, read_plan, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                to_i64(rec.round)?,
                rec.request_id,
                rec.target_contact,
                rec.write_a,
                rec.write_b,
                rec.read_a,
                rec.read_b,
                rec.read_plan,
                to_i64(rec.created_ms)?
            ],
        )?;
        Ok(())
    }

    /// The record of `round`, if it was built.
    pub fn round(&self, round: u64) -> Result<Option<RoundRecord>, Error> {
        let mut stmt = self.tx.prepare(
            "SELECT round, request_id, target_contact, write_a, write_b, read_a, read_b, read_plan,
                    receipt_a, receipt_b, committed_a, committed_b, reads_done, decrypted,
                    accepted, final, created_ms
             FROM rounds WHERE round = ?1",
        )?;
        let rec = stmt
            .query_row([to_i64(round)?], |r| {
                Ok((
                    RoundRecord {
                        round,
                        request_id: r.get(1)?,
                        target_contact: r.get(2)?,
                        write_a: r.get(3)?,
                        write_b: r.get(4)?,
                        read_a: r.get(5)?,
                        read_b: r.get(6)?,
                        read_plan: r.get(7)?,
                        receipt_a: r.get(8)?,
                        receipt_b: r.get(9)?,
                        committed_a: r.get(10)?,
                        committed_b: r.get(11)?,
                        reads_done: r.get(12)?,
                        decrypted: 0,
                        accepted: r.get(14)?,
                        is_final: r.get(15)?,
                        created_ms: 0,
                    },
                    r.get::<_, i64>(13)?,
                    r.get::<_, i64>(16)?,
                ))
            })
            .optional()?;
        rec.map(|(mut rec, dec, created)| {
            rec.decrypted = to_u32(dec)?;
            rec.created_ms = to_u64(created)?;
            Ok(rec)
        })
        .transpose()
    }

    /// The most recent rounds, newest first.
    pub fn recent_rounds(&self, limit: u64) -> Result<Vec<RoundRecord>, Error> {
        let rounds: Vec<i64> = {
            let mut stmt = self
                .tx
                .prepare("SELECT round FROM rounds ORDER BY round DESC LIMIT ?1")?;
            stmt.query_map([to_i64(limit)?], |r| r.get(0))?
                .collect::<Result<_, _>>()?
        };
        let mut out = Vec::new();
        for r in rounds {
            if let Some(rec) = self.round(to_u64(r)?)? {
                out.push(rec);
            }
        }
        Ok(out)
    }

    /// Rounds whose reads are not processed yet, oldest first.
    pub fn rounds_with_pending_reads(&self) -> Result<Vec<u64>, Error> {
        let mut stmt = self
            .tx
            .prepare("SELECT round FROM rounds WHERE reads_done = 0 ORDER BY round")?;
        let v: Vec<i64> = stmt
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        v.into_iter().map(to_u64).collect()
    }

    /// Rounds not yet final, oldest first.
    pub fn unfinished_rounds(&self) -> Result<Vec<u64>, Error> {
        let mut stmt = self
            .tx
            .prepare("SELECT round FROM rounds WHERE final = 0 ORDER BY round")?;
        let v: Vec<i64> = stmt
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        v.into_iter().map(to_u64).collect()
    }

    /// Stores a server's receipt (`server` is 0 for A, 1 for B).
    pub fn set_receipt(&self, round: u64, server: usize, receipt: &[u8]) -> Result<(), Error> {
        let col = if server == 0 {
            "receipt_a"
        } else {
            "receipt_b"
        };
        self.tx.execute(
            &format!("UPDATE rounds SET {col} = ?1 WHERE round = ?2"),
            params![receipt, to_i64(round)?],
        )?;
        Ok(())
    }

    /// Records that a server acknowledged our commit.
    pub fn set_committed(&self, round: u64, server: usize) -> Result<(), Error> {
        let col = if server == 0 {
            "committed_a"
        } else {
            "committed_b"
        };
        self.tx.execute(
            &format!("UPDATE rounds SET {col} = 1 WHERE round = ?1"),
            [to_i64(round)?],
        )?;
        Ok(())
    }

    /// Marks the round's reads processed, with how many decrypted.
    pub fn set_reads_done(&self, round: u64, decrypted: u32) -> Result<(), Error> {
        self.tx.execute(
            "UPDATE rounds SET reads_done = 1, decrypted = ?1, read_a = NULL, read_b = NULL,
             read_plan = NULL WHERE round = ?2",
            params![decrypted, to_i64(round)?],
        )?;
        Ok(())
    }

    /// Finalises a round: records whether the write was accepted (if known) and deletes its
    /// receipts and request bytes. Old rows beyond [`ROUND_HISTORY`] are pruned.
    pub fn finalize_round(&self, round: u64, accepted: Option<bool>) -> Result<(), Error> {
        self.tx.execute(
            "UPDATE rounds SET final = 1, accepted = ?1, receipt_a = NULL, receipt_b = NULL,
             write_a = NULL, write_b = NULL WHERE round = ?2",
            params![accepted, to_i64(round)?],
        )?;
        self.tx.execute(
            "DELETE FROM rounds WHERE final = 1 AND reads_done = 1 AND round < ?1",
            [to_i64(round.saturating_sub(ROUND_HISTORY))?],
        )?;
        Ok(())
    }

    // ---- ratchets ----

    /// A contact's forward-secrecy state, if one was stored.
    pub fn ratchet(&self, contact_id: i64) -> Result<Option<Ratchet>, Error> {
        type Row = (
            i64,
            i64,
            Option<Vec<u8>>,
            Option<Vec<u8>>,
            Option<Vec<u8>>,
            Vec<u8>,
            Vec<u8>,
        );
        let row: Option<Row> = self
            .tx
            .query_row(
                "SELECT epoch, established, chain, eph_secret, block, incoming, outgoing
                 FROM ratchets WHERE contact_id = ?1",
                [contact_id],
                |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                    ))
                },
            )
            .optional()?;
        let Some((epoch, established, chain, eph, block, incoming, outgoing)) = row else {
            return Ok(None);
        };
        let secret = |v: Option<Vec<u8>>| -> Result<Option<Secret32>, Error> {
            v.map(|v| {
                let v = Zeroizing::new(v);
                <[u8; 32]>::try_from(v.as_slice())
                    .map(Secret32)
                    .map_err(|_| Error::Corrupt(format!("ratchet key of {} bytes", v.len())))
            })
            .transpose()
        };
        let block = block
            .map(|b| KeyBlock::decode(&b).ok_or_else(|| Error::Corrupt("ratchet block".into())))
            .transpose()?;
        let (incoming, outgoing) = (Zeroizing::new(incoming), Zeroizing::new(outgoing));
        Ok(Some(Ratchet {
            epoch: to_u32(epoch)?,
            established: to_u64(established)?,
            chain: secret(chain)?,
            eph: secret(eph)?,
            block,
            incoming: Direction::from_bytes(&incoming)?,
            outgoing: Direction::from_bytes(&outgoing)?,
        }))
    }

    /// Saves a contact's forward-secrecy state, overwriting the previous one in place.
    pub fn set_ratchet(&self, contact_id: i64, r: &Ratchet) -> Result<(), Error> {
        self.tx.execute(
            "INSERT INTO ratchets (contact_id, epoch, established, chain, eph_secret, block,
             incoming, outgoing) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT(contact_id) DO UPDATE SET epoch = excluded.epoch,
             established = excluded.established, chain = excluded.chain,
             eph_secret = excluded.eph_secret, block = excluded.block,
             incoming = excluded.incoming, outgoing = excluded.outgoing",
            params![
                contact_id,
                r.epoch,
                to_i64(r.established)?,
                r.chain.as_ref().map(|c| &c.0[..]),
                r.eph.as_ref().map(|c| &c.0[..]),
                r.block.map(|b| b.encode().to_vec()),
                &r.incoming.to_bytes()[..],
                &r.outgoing.to_bytes()[..],
            ],
        )?;
        Ok(())
    }

    // ---- links ----

    /// Records the outcome of an exchange with a server.
    pub fn set_link(&self, server: &str, error: Option<&str>, now_ms: u64) -> Result<(), Error> {
        let now = to_i64(now_ms)?;
        match error {
            None => self.tx.execute(
                "INSERT INTO links (server, up, last_ok_ms, last_error, updated_ms)
                 VALUES (?1, 1, ?2, NULL, ?2)
                 ON CONFLICT(server) DO UPDATE SET up = 1, last_ok_ms = ?2, last_error = NULL,
                 updated_ms = ?2",
                params![server, now],
            )?,
            Some(e) => self.tx.execute(
                "INSERT INTO links (server, up, last_ok_ms, last_error, updated_ms)
                 VALUES (?1, 0, NULL, ?2, ?3)
                 ON CONFLICT(server) DO UPDATE SET up = 0, last_error = ?2, updated_ms = ?3",
                params![server, e, now],
            )?,
        };
        Ok(())
    }

    /// The links, A then B.
    pub fn links(&self) -> Result<Vec<Link>, Error> {
        let mut stmt = self.tx.prepare(
            "SELECT server, up, last_ok_ms, last_error, updated_ms FROM links ORDER BY server",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, bool>(1)?,
                r.get::<_, Option<i64>>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, i64>(4)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (server, up, ok, err, upd) = row?;
            out.push(Link {
                server,
                up,
                last_ok_ms: ok.map(to_u64).transpose()?,
                last_error: err,
                updated_ms: to_u64(upd)?,
            });
        }
        Ok(out)
    }
}

struct ContactRow {
    id: i64,
    name: String,
    public_key: Vec<u8>,
    index: i64,
    added_ms: i64,
    send: [i64; 4],
    timer: Option<i64>,
    expected: i64,
}

impl ContactRow {
    fn into_contact(self) -> Result<Contact, Error> {
        Ok(Contact {
            id: self.id,
            name: self.name,
            public_key: key32(self.public_key)?,
            index: usize::try_from(self.index)
                .map_err(|_| Error::Corrupt(format!("contact index {}", self.index)))?,
            added_ms: to_u64(self.added_ms)?,
            send: SendState {
                base: to_u32(self.send[0])?,
                next: to_u32(self.send[1])?,
                high: to_u32(self.send[2])?,
                end: to_u32(self.send[3])?,
                timer: self.timer.map(to_u64).transpose()?,
            },
            recv: RecvState {
                expected: to_u32(self.expected)?,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_store() -> Result<(tempfile::TempDir, Store), Error> {
        let dir = tempfile::tempdir().map_err(|e| Error::io(Path::new("tmp"), e))?;
        let store = Store::create(&dir.path().join("store.db"))?;
        Ok((dir, store))
    }

    #[test]
    fn contacts_add_rename_remove() -> Result<(), Error> {
        let (_d, mut s) = temp_store()?;
        s.with_tx(|t| {
            t.add_contact("bob", &[1; 32], 2, 10)?;
            t.add_contact("carol", &[2; 32], 0, 11)?;
            Ok(())
        })?;
        let tx = s.tx()?;
        assert!(matches!(
            tx.add_contact("bob", &[3; 32], 1, 0),
            Err(Error::DuplicateName(_))
        ));
        assert!(matches!(
            tx.add_contact("dave", &[1; 32], 1, 0),
            Err(Error::DuplicateKey(n)) if n == "bob"
        ));
        let names: Vec<String> = tx.contacts()?.into_iter().map(|c| c.name).collect();
        assert_eq!(names, vec!["carol", "bob"], "ordered by index");
        tx.rename_contact("bob", "robert")?;
        assert!(matches!(
            tx.rename_contact("robert", "carol"),
            Err(Error::DuplicateName(_))
        ));
        assert_eq!(tx.contact_by_name("robert")?.index, 2);
        tx.remove_contact("carol")?;
        assert!(matches!(
            tx.contact_by_name("carol"),
            Err(Error::UnknownContact(_))
        ));
        tx.commit()?;
        Ok(())
    }

    #[test]
    fn store_file_is_private_and_reopens() -> Result<(), Error> {
        let dir = tempfile::tempdir().map_err(|e| Error::io(Path::new("tmp"), e))?;
        let path = dir.path().join("store.db");
        {
            let mut s = Store::create(&path)?;
            s.with_tx(|t| t.set_meta_u64("x", 42))?;
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path)
                .map_err(|e| Error::io(&path, e))?
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0);
        }
        let mut s = Store::open(&path)?;
        assert_eq!(s.with_tx(|t| t.meta_u64("x"))?, Some(42));
        assert!(matches!(
            Store::create(&path),
            Err(Error::AlreadyInitialised(_))
        ));
        Ok(())
    }

    /// A store file that was truncated, overwritten in the middle, or replaced by garbage or
    /// an empty file is refused with `Error::Corrupt` naming the file, never used.
    #[test]
    fn damaged_store_files_are_refused() -> Result<(), Error> {
        let dir = tempfile::tempdir().map_err(|e| Error::io(Path::new("tmp"), e))?;
        let good = dir.path().join("good.db");
        {
            let mut s = Store::create(&good)?;
            s.with_tx(|t| {
                for i in 0..3000u64 {
                    t.set_meta_u64(&format!("filler-{i:05}"), i)?;
                }
                Ok(())
            })?;
        }
        let bytes = std::fs::read(&good).map_err(|e| Error::io(&good, e))?;
        assert!(bytes.len() > 8 * 4096, "several pages: {}", bytes.len());
        let mut middle = bytes.clone();
        for b in &mut middle[2 * 4096..4 * 4096] {
            *b = 0xab;
        }
        let mut header = bytes.clone();
        header[..100].fill(0x5a);
        let damaged: [(&str, Vec<u8>); 4] = [
            ("truncated", bytes[..bytes.len() / 2].to_vec()),
            ("overwritten", middle),
            ("garbage-header", header),
            ("empty", Vec::new()),
        ];
        for (name, content) in damaged {
            let path = dir.path().join(format!("{name}.db"));
            drop(create_private_file(&path)?);
            std::fs::write(&path, &content).map_err(|e| Error::io(&path, e))?;
            match Store::open(&path) {
                Err(Error::Corrupt(why)) => assert!(why.contains(name), "{name}: {why}"),
                Err(e) => panic!("{name}: not reported as corrupt: {e}"),
                Ok(_) => panic!("{name}: a damaged store was opened"),
            }
        }
        // The undamaged original still opens.
        let mut s = Store::open(&good)?;
        assert_eq!(s.with_tx(|t| t.meta_u64("filler-02999"))?, Some(2999));
        Ok(())
    }

    #[test]
    fn dropped_transaction_changes_nothing() -> Result<(), Error> {
        let (_d, mut s) = temp_store()?;
        s.with_tx(|t| t.add_contact("bob", &[1; 32], 0, 0).map(|_| ()))?;
        {
            let tx = s.tx()?;
            let bob = tx.contact_by_name("bob")?;
            tx.queue_message(&bob, b"hi", &[(b"hi".to_vec(), true)], 1)?;
            // dropped without commit: a crash
        }
        let tx = s.tx()?;
        assert!(tx.outgoing()?.is_empty());
        assert_eq!(tx.contact_by_name("bob")?.send, SendState::default());
        Ok(())
    }

    #[test]
    fn message_progress_and_delivery() -> Result<(), Error> {
        let (_d, mut s) = temp_store()?;
        let tx = s.tx()?;
        let bob = tx.add_contact("bob", &[1; 32], 0, 0)?;
        let frags = vec![(b"ab".to_vec(), false), (b"cd".to_vec(), true)];
        tx.queue_message(&bob, b"abcd", &frags, 5)?;
        let mut bob = tx.contact_by_name("bob")?;
        assert_eq!(bob.send.end, 2);
        let seq = bob
            .send
            .turn(10, 9, 8)
            .ok_or(Error::Corrupt("no turn".into()))?;
        tx.mark_fragment_sent(bob.id, seq, 10)?;
        tx.set_delivery(bob.id, &bob.send, &bob.recv)?;
        let m = &tx.outgoing()?[0];
        assert_eq!(
            (m.fragments, m.fragments_sent, m.fragments_acked),
            (2, 1, 0)
        );
        bob.send.on_ack(1, 12)?;
        tx.acked_below(bob.id, bob.send.base, 12)?;
        tx.set_delivery(bob.id, &bob.send, &bob.recv)?;
        let m = &tx.outgoing()?[0];
        assert_eq!(
            (m.fragments_sent, m.fragments_acked, m.delivered_round),
            (1, 1, None)
        );
        let seq = bob
            .send
            .turn(14, 9, 8)
            .ok_or(Error::Corrupt("no turn".into()))?;
        tx.mark_fragment_sent(bob.id, seq, 14)?;
        bob.send.on_ack(2, 16)?;
        tx.acked_below(bob.id, bob.send.base, 16)?;
        tx.set_delivery(bob.id, &bob.send, &bob.recv)?;
        let m = &tx.outgoing()?[0];
        assert_eq!(
            (m.fragments_sent, m.fragments_acked, m.delivered_round),
            (2, 2, Some(16))
        );
        tx.commit()?;
        Ok(())
    }

    #[test]
    fn rounds_persist_and_finalise() -> Result<(), Error> {
        let (_d, mut s) = temp_store()?;
        let rec = RoundRecord {
            round: 100,
            request_id: vec![7; 16],
            write_a: Some(vec![1, 2, 3]),
            write_b: Some(vec![4, 5]),
            read_a: Some(vec![6]),
            read_b: Some(vec![7]),
            read_plan: Some(vec![8]),
            created_ms: 9,
            ..RoundRecord::default()
        };
        s.with_tx(|t| t.insert_round(&rec))?;
        let tx = s.tx()?;
        assert_eq!(tx.round(100)?.as_ref(), Some(&rec));
        assert!(tx.insert_round(&rec).is_err(), "one write per round, ever");
        tx.set_receipt(100, 0, b"ra")?;
        tx.set_receipt(100, 1, b"rb")?;
        tx.set_committed(100, 1)?;
        tx.set_reads_done(100, 2)?;
        assert_eq!(tx.rounds_with_pending_reads()?, Vec::<u64>::new());
        let got = tx.round(100)?.ok_or(Error::Corrupt("gone".into()))?;
        assert_eq!(got.receipt_a.as_deref(), Some(&b"ra"[..]));
        assert!(got.committed_b && !got.committed_a && got.reads_done);
        assert_eq!(got.decrypted, 2);
        tx.finalize_round(100, Some(true))?;
        let fin = tx.round(100)?.ok_or(Error::Corrupt("gone".into()))?;
        assert!(fin.is_final);
        assert_eq!(fin.accepted, Some(true));
        assert_eq!(
            (fin.receipt_a, fin.receipt_b, fin.write_a, fin.write_b),
            (None, None, None, None)
        );
        tx.commit()?;
        Ok(())
    }

    #[test]
    fn a_version_1_store_is_migrated_and_ratchets_persist() -> Result<(), Error> {
        let dir = tempfile::tempdir().map_err(|e| Error::io(Path::new("tmp"), e))?;
        let path = dir.path().join("store.db");
        Store::create_v1(&path)?;
        Connection::open(&path)?.execute(
            "INSERT INTO contacts (name, public_key, idx, added_ms) VALUES ('bob', ?1, 0, 0)",
            [&[1u8; 32][..]],
        )?;
        let mut s = Store::open(&path)?;
        let tx = s.tx()?;
        assert_eq!(tx.meta_u64("schema")?, Some(SCHEMA_VERSION as u64));
        let bob = tx.contact_by_name("bob")?;
        assert!(
            tx.ratchet(bob.id)?.is_none(),
            "migrated contacts start in epoch 0"
        );
        let mut r = Ratchet::new();
        r.start_step(&mut dpf::SeededRandom::new([1; 32]));
        r.incoming.cur = Some(crate::ratchet::GgmTree::new(&[2; 32]));
        r.incoming.consumed(77);
        tx.set_ratchet(bob.id, &r)?;
        let back = tx.ratchet(bob.id)?.ok_or(Error::Corrupt("gone".into()))?;
        assert_eq!((back.epoch, back.block), (r.epoch, r.block));
        assert_eq!(back.secrets(), r.secrets());
        assert_eq!(back.incoming.seeds(), r.incoming.seeds());
        tx.remove_contact("bob")?;
        assert!(tx.ratchet(bob.id)?.is_none(), "removed with its contact");
        tx.set_meta_u64("schema", 3)?;
        tx.commit()?;
        drop(s);
        assert!(
            matches!(Store::open(&path), Err(Error::Corrupt(_))),
            "newer schema"
        );
        Ok(())
    }

    #[test]
    fn links_record_up_and_down() -> Result<(), Error> {
        let (_d, mut s) = temp_store()?;
        let tx = s.tx()?;
        tx.set_link("A", None, 5)?;
        tx.set_link("B", Some("connection refused"), 6)?;
        tx.set_link("A", Some("timeout"), 7)?;
        let l = tx.links()?;
        assert_eq!(l.len(), 2);
        assert!(!l[0].up && l[0].last_ok_ms == Some(5));
        assert_eq!(l[1].last_error.as_deref(), Some("connection refused"));
        Ok(())
    }
}
