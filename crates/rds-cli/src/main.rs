//! `rds`: the run-dat-sheesh binary. It only wires flags to the libraries.

mod bench;
mod bench_network;
mod bench_peers;
mod bench_pty;
mod bench_snapshots;
mod image;
mod key;
mod progress;
mod serve;
mod vm;
mod vm_api;

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
    /// Work with the VMs of a running manager (RDS_URL, RDS_API_KEY).
    Vm(vm::VmArgs),
    /// Manage a manager's API keys (RDS_URL, RDS_API_KEY).
    Key(key::KeyArgs),
    /// Print a shell completion script: `rds completions bash > /etc/bash_completion.d/rds`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Image(args) => image::run(args),
        Command::Vm(args) => vm::run(args),
        Command::Key(args) => key::run(args),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "rds",
                &mut std::io::stdout(),
            );
            Ok(())
        }
    };
    if let Err(e) = result {
        eprintln!("rds: {e:#}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed() {
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }
}
