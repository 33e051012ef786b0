//! The library's error type.

use std::path::{Path, PathBuf};

use crate::code::CodeError;
use crate::delivery::DeliveryError;
use crate::frame::FrameError;

/// Everything that can go wrong in the client library.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The SQLite store failed.
    #[error("store: {0}")]
    Store(#[from] rusqlite::Error),
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A secret file that others can read.
    #[error("{} has mode {mode:o}; secrets must be readable by the user only (chmod 600)", path.display())]
    InsecurePermissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The home directory holds no client yet.
    #[error("{} not found: run `client init` first", .0.display())]
    NotInitialised(PathBuf),
    /// `init` on a home that already holds a client.
    #[error("{} already exists: this home is already initialised", .0.display())]
    AlreadyInitialised(PathBuf),
    /// The config file is invalid.
    #[error("config: {0}")]
    Config(String),
    /// A store that does not match what this client wrote.
    #[error("corrupt store: {0}")]
    Corrupt(String),
    /// The pinned parameters are outside what this client supports.
    #[error("unsupported parameters: {0}")]
    UnsupportedParams(String),
    /// A contact code did not decode.
    #[error("invalid contact code: {0}")]
    ContactCode(#[from] CodeError),
    /// No contact of that name.
    #[error("no contact named {0:?}")]
    UnknownContact(String),
    /// A contact of that name exists.
    #[error("a contact named {0:?} already exists")]
    DuplicateName(String),
    /// The code is already in the contact list.
    #[error("this contact code is already in your contacts as {0:?}")]
    DuplicateKey(String),
    /// The contact table is full.
    #[error("the contact list is full ({0} contacts is the pinned maximum)")]
    ContactsFull(usize),
    /// A contact name that cannot be used.
    #[error("invalid contact name {0:?}: use 1 to 64 printable characters")]
    InvalidName(String),
    /// One's own code added as a contact.
    #[error("that is your own contact code")]
    SelfContact,
    /// A contact key that yields no shared secret.
    #[error("key agreement failed: the contact key is a low-order point")]
    WeakKey,
    /// A cryptographic primitive failed.
    #[error("crypto: {0}")]
    Crypto(&'static str),
    /// A frame did not encode or decode.
    #[error("frame: {0}")]
    Frame(#[from] FrameError),
    /// A server announces parameters other than the pinned ones, or A and B disagree.
    #[error("{0}")]
    ParamsMismatch(String),
    /// A server could not be reached (or did not answer in time).
    #[error("server {server} unreachable: {message}")]
    Net {
        /// `A` or `B`.
        server: &'static str,
        /// What failed.
        message: String,
    },
    /// A server refused a request (a non-200 answer).
    #[error("server {server} refused: {message}")]
    Refused {
        /// `A` or `B`.
        server: &'static str,
        /// Its error response.
        message: String,
    },
    /// A server's answer is malformed or does not verify.
    #[error("server {server}: {message}")]
    Protocol {
        /// `A` or `B`.
        server: &'static str,
        /// What is wrong with the answer.
        message: String,
    },
    /// DPF key generation failed.
    #[error("dpf: {0}")]
    Dpf(String),
    /// The delivery layer refused a step.
    #[error("delivery: {0}")]
    Delivery(#[from] DeliveryError),
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
