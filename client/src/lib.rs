//! The messenger's client: a library, the `client` command-line tool and its daemon.
//!
//! Two users who exchanged contact codes chat through two servers run by operators who do not
//! collude. Every online client takes part in every round with exactly one write (a DPF key
//! pair for one L-byte slot) and k reads (DPF read keys over the array published `lag` rounds
//! earlier), at pinned offsets, whatever its user does; neither server, nor the network, nor a
//! contact learns who talks to whom (docs/protocol.md §1, §6). This crate is the client side of
//! docs/protocol.md §3.1 and §5.
//!
//! # Layout
//!
//! | module | what it does |
//! | --- | --- |
//! | [`identity`], [`code`] | X25519 + Ed25519 keys in a 0600 key file; contact codes (`mpm1-…`, base32, checksummed) and safety numbers |
//! | [`session`] | bootstrap pair root from static X25519 + HKDF, direction-labelled `K_addr`/`K_aead`, per-round keys from a tree leaf, slot addressing `HMAC(K_addr, r) mod N`, XChaCha20-Poly1305 slots |
//! | [`ratchet`] | forward secrecy: in-band ephemeral X25519 steps (key blocks in frames), reader-chosen switch rounds, a GGM tree of per-round keys per direction and epoch, periodic healing |
//! | [`frame`] | the fixed-size plaintext frame in every slot (ack, fragment, key block, padding) |
//! | [`schedule`] | which contact a round's write goes to (channel `r mod w`), the k shuffled reads |
//! | [`delivery`] | go-back-N with cumulative acks, duplicate suppression, fragmentation and reassembly |
//! | [`store`] | SQLite store; every state change one transaction |
//! | [`engine`] | the sans-IO round logic over the store: build a write, plan reads, process answers |
//! | [`wire`] | the protocol crate's messages: write/commit/read requests, receipts, answers |
//! | [`net`] | both servers over pinned TLS (`transport`), in parallel, retried with the same bytes |
//! | [`client`] | [`Client`]: open a home, contacts, send, inbox, status, `sync_rounds`, `run` |
//! | [`cli`] | argument parsing and text/JSON output for the binary |
//!
//! # Assumptions
//!
//! * The two servers do not collude; each is pinned by certificate and signing key.
//! * The parameters are pinned at `init`; a server announcing others is refused.
//! * `c_max <= k` and `c_max <= w` (the baseline schedule of docs/protocol.md §5.2).
//! * Forward secrecy starts with a pair's first ephemeral exchange: frames written before both
//!   directions have switched to it are protected by the static keys only, and a device
//!   compromise exposes the frames of the last `lag` rounds not yet read. See docs/protocol.md
//!   §5.1.
//!
//! # Example
//!
//! Driving a client from Rust, as the end-to-end tests do (servers must be running):
//!
//! ```no_run
//! # async fn demo(alice_home: &std::path::Path, bob_code: &str) -> Result<(), client::Error> {
//! let mut alice = client::Client::open(alice_home)?;
//! let bob = alice.add_contact("bob", bob_code)?;
//! println!("compare the safety number {}", bob.safety_number);
//! alice.send("bob", b"hello bob")?;
//! alice.check_servers().await?;
//! let report = alice.sync_rounds(10).await?;
//! println!("{} rounds, {} messages received", report.rounds, report.received);
//! for m in alice.inbox()? {
//!     println!("{}: {}", m.from, m.text);
//! }
//! # Ok(())
//! # }
//! ```

pub mod cli;
pub mod client;
pub mod clock;
pub mod code;
pub mod config;
pub mod delivery;
pub mod engine;
pub mod error;
pub mod frame;
pub mod fsutil;
pub mod identity;
pub mod net;
pub mod ratchet;
pub mod schedule;
pub mod session;
pub mod store;
pub mod wire;

pub use client::{Client, InitOptions};
pub use config::{ClientConfig, ServerConfig};
pub use error::Error;
