//! server-core tests: the sans-IO state machine under simulated time (`machine`), and two
//! real servers over TLS on 127.0.0.1 (`servers`).

mod common;
mod machine;
mod monitoring;
mod ops;
mod servers;
