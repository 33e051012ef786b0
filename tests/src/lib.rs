//! End-to-end test harness: real `server-a`, `server-b` and `client` processes.
//!
//! The tests in `tests/e2e.rs` use this library to
//!
//! * find the workspace's binaries next to the test executable, building them first with
//!   `cargo build --locked --bins` (a no-op when they are up to date; see [`bins`]);
//! * create, start, `SIGKILL` and restart server processes from their data dirs ([`server`]);
//! * drive clients through the `client` binary: `init`, `code`, `add`, `send`, `inbox`,
//!   `status`, and the `run` daemon ([`client`]);
//! * check that every message arrives exactly once, in order, with its exact text
//!   ([`expect`]);
//! * observe client traffic on the wire with a TCP proxy that records TLS record sizes and
//!   times per connection ([`proxy`]), and compare what two clients sent ([`traffic`]);
//! * build network namespaces joined by veth pairs ([`netns`]).
//!
//! Every wait is bounded by a [`util::Deadline`]; every child process is killed when its handle
//! is dropped; on failure [`scene::Scene`] prints the tails of every process log.

pub mod bins;
pub mod client;
pub mod expect;
pub mod netns;
pub mod proxy;
pub mod scene;
pub mod server;
pub mod traffic;
pub mod util;
