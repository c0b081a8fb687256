//! `rds-agent relay`: the host's end of a QEMU VM's agent channel, one process per VM started by
//! the qemu runtime (see [`rds_mux::relay`]). It runs on the host, not in a guest.

use std::path::PathBuf;

use anyhow::Context;

/// `rds-agent relay` flags.
#[derive(Debug, clap::Args)]
pub struct RelayArgs {
    /// Socket QEMU's virtio-serial chardev connects to.
    #[arg(long, value_name = "PATH")]
    serial: PathBuf,
    /// Hybrid-vsock socket to serve (guest-dialled ports go to `<PATH>_<port>`).
    #[arg(long, value_name = "PATH")]
    agent: PathBuf,
    /// Pause/resume socket.
    #[arg(long, value_name = "PATH")]
    control: PathBuf,
}

/// Serves until QEMU is gone.
pub fn main(args: RelayArgs) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RDS_RELAY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt().with_writer(std::io::stderr).with_env_filter(filter).try_init();
    // Every socket it binds is for root alone, from its first moment.
    // SAFETY: umask only swaps the process file-creation mask; no other thread runs yet.
    unsafe { libc::umask(0o177) };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?;
    let paths = rds_mux::relay::RelayPaths { serial: args.serial, agent: args.agent, control: args.control };
    runtime.block_on(rds_mux::relay::run(paths)).context("serving the agent channel")
}
