//! Server A: the command line of `server_core::cli` with role A.

fn main() -> anyhow::Result<()> {
    server_core::cli::main(protocol::Role::A)
}
