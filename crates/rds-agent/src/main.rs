//! `rds-agent`: guest agent, guest PID 1 and sandbox launcher in one small binary.

use std::path::Path;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "rds-agent", version, about = "run-dat-sheesh guest agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the agent API on a Unix socket, an inherited fd or AF_VSOCK.
    Serve(rds_agent::server::ServeArgs),
    /// Run as PID 1 of a guest: mount, reap, supervise the agent, power off on shutdown.
    Init,
    /// Enter fresh namespaces described by a spec and run the agent there as PID 1 (sandbox runtime).
    Sandbox(rds_agent::sandbox::SandboxArgs),
    /// On the host: relay a QEMU VM's virtio-serial agent channel to hybrid-vsock sockets.
    Relay(rds_agent::relay::RelayArgs),
    /// Measure exec round-trips over the UDS transport against a bare fork/exec; prints JSON.
    Bench(rds_agent::bench::BenchArgs),
}

/// True when the guest started this binary as its `/sbin/init`: it then gets no subcommand and
/// may even get stray kernel command-line words as arguments.
fn started_as_init() -> bool {
    let mut args = std::env::args_os();
    let named_init = args.next().is_some_and(|argv0| Path::new(&argv0).file_name().is_some_and(|n| n == "init"));
    named_init || (std::process::id() == 1 && args.next().is_none())
}

fn main() {
    if started_as_init() {
        if let Err(e) = rds_agent::init::main() {
            eprintln!("rds-agent init: {e:#}");
            std::process::exit(1);
        }
        return;
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => rds_agent::server::main(args),
        Command::Init => rds_agent::init::main(),
        Command::Sandbox(args) => rds_agent::sandbox::main(args),
        Command::Bench(args) => rds_agent::bench::main(args),
        Command::Relay(args) => rds_agent::relay::main(args),
    };
    if let Err(e) = result {
        eprintln!("rds-agent: {e:#}");
        std::process::exit(1);
    }
}
