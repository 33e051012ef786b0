//! Server B: the command line of `server_core::cli` with role B.

fn main() -> anyhow::Result<()> {
    server_core::cli::main(protocol::Role::B)
}
