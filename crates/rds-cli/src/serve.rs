//! `rds serve`: start the manager and tell the operator where it is and how to authenticate.

use anyhow::Context;
use rds_manager::services::api_keys::KeyNotice;
use rds_manager::Config;

/// Flags of `rds serve`.
#[derive(clap::Args)]
pub struct ServeArgs {
    /// Revoke stored API keys and print a fresh one.
    #[arg(long)]
    new_api_key: bool,
}

/// Runs the manager until killed.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let config = Config::from_env()?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let prepared = rds_manager::server::prepare(config, args.new_api_key).await?;
        let addr = prepared.listener.local_addr()?;
        let r = &prepared.reconciled;
        tracing::info!(
            adopted = r.adopted.len(),
            settled = r.settled.len(),
            deleted = r.deleted.len(),
            orphans = r.orphans_removed.len(),
            "reconciled VMs"
        );
        let scheme = if prepared.tls.is_some() { "https" } else { "http" };
        println!(
            "rds listening on {scheme}://{addr} (runtime {}, isolation {})",
            prepared.state.runtime.kind().as_str(),
            prepared.state.runtime.isolation().as_str()
        );
        match &prepared.key_notice {
            KeyNotice::FromEnv => println!("API key: from the API_KEY environment variable"),
            KeyNotice::Generated(key) => {
                println!("API key (shown only once; send it as X-API-Key): {key}")
            }
            KeyNotice::Existing => {
                println!("API key: a stored key exists (run `rds serve --new-api-key` to replace it)")
            }
        }
        rds_manager::server::serve(prepared).await.context("serving the API")
    })
}
