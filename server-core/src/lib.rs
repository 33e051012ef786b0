//! # server-core: the engine of both servers
//!
//! Server A and server B run the same code; the role is configuration. Each round (see
//! `docs/protocol.md` §3) goes OPEN -> CUTOFF -> SETS -> AUDIT -> EXCHANGE -> PUBLISHED or
//! ABANDONED, and the two servers must agree on every step. Privacy rests on the two operators
//! not colluding; integrity checks (receipts, audits, signed hashes) catch a misbehaving peer or
//! client and abandon the round rather than publish something one-sided.
//!
//! ## Layout
//! * [`machine`]: the sans-IO round state machine. Inputs are method calls with the current
//!   unix-ms time; outputs are [`machine::Action`]s (persist, send to peer, audit job, publish,
//!   abandon, alarm, prune). Tested with simulated time.
//! * [`compute`]: the DPF kernels (audit evaluation, batched PIR answers) spread over cores.
//! * [`store`]: checksummed record files (write, fsync, rename); corrupted files are reported,
//!   never used.
//! * [`server`]: the thin tokio shell: [`run`] serves the client port (TLS), the peer port
//!   (mutual TLS with the pinned peer certificate) and an optional loopback admin port
//!   (`/metrics`, `/healthz`, `/readyz`).
//!   On shutdown it first drains: new writes are refused and the rounds in progress are
//!   finished (or abandoned) together with the peer before it exits.
//! * [`config`]: the TOML configuration; [`ops`]: `init`, `set-peer`, `check-config` and
//!   running from a config file, shared by the `server-a` and `server-b` binaries.
//! * [`metrics`]: Prometheus counters, gauges and fixed-bucket histograms without per-client
//!   labels; [`health`]: what `/readyz` means ("serving and in sync").
//!
//! ## Invariants
//! * A write half is persisted before its receipt is sent; a commit before its ack; every peer
//!   message before it is acknowledged; every own step before it is announced.
//! * A write enters the array only if both servers committed it and its audit values agree.
//! * A server never adopts the peer's array: it computes `M_r` from its own share and the
//!   peer's share and publishes only when both signed hashes agree before the deadline.
//!
//! ## Example
//! ```no_run
//! # async fn demo(config: server_core::Config) -> Result<(), server_core::ServerError> {
//! let client = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let peer = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! server_core::run(config, client, peer, None, async { /* shutdown signal */ }).await
//! # }
//! ```

pub mod alloc;
pub mod cli;
pub mod compute;
pub mod config;
pub mod early;
pub mod health;
pub mod machine;
pub mod metrics;
#[cfg(feature = "misbehave")]
pub mod misbehave;
pub mod ops;
pub mod server;
pub mod store;

pub use config::{Config, ConfigError, Registration};
pub use server::{ServerError, run, run_with_metrics};
