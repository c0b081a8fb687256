//! `rds`: the run-dat-sheesh binary. It only wires flags to the libraries.

mod bench;
mod bench_network;
mod bench_peers;
mod bench_pty;
mod bench_snapshots;
mod image;
mod serve;
mod vm;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "rds", version, about = "run-dat-sheesh: run untrusted code in VMs")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the manager API (configured by environment variables: PORT, BIND, STORAGE_ROOT, ...).
    Serve(serve::ServeArgs),
    /// Measure the manager's latency; prints JSON.
    Bench(bench::BenchArgs),
    /// Build guest images (and register them with a manager).
    Image(image::ImageArgs),
    /// Work with one VM of a running manager (RDS_URL, RDS_API_KEY).
    Vm(vm::VmArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Image(args) => image::run(args),
        Command::Vm(args) => vm::run(args),
    };
    if let Err(e) = result {
        eprintln!("rds: {e:#}");
        std::process::exit(1);
    }
}
