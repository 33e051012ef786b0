//! Server B: the command line of `server_core::cli` with role B.

/// Keeps freed share arrays for the next round (see `server_core::alloc`).
#[global_allocator]
static ALLOC: server_core::alloc::ReuseLarge = server_core::alloc::ReuseLarge;

fn main() -> anyhow::Result<()> {
    server_core::cli::main(protocol::Role::B)
}
