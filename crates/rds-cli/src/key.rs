//! `rds key create|ls|revoke`: the manager's API keys (`/v1/api-keys`).

use anyhow::Result;

use crate::vm::Conn;

#[derive(clap::Args)]
pub struct KeyArgs {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    command: KeyCommand,
}

#[derive(clap::Subcommand)]
enum KeyCommand {
    /// Create a key and print it (the only time it is shown).
    Create {
        /// What the key is for.
        #[arg(long)]
        name: String,
        /// Days until it stops working (default: until revoked).
        #[arg(long)]
        expires_days: Option<u32>,
    },
    /// List the stored keys (never the keys themselves).
    Ls,
    /// Revoke a key: refused from the next request on.
    Revoke { id: String },
}

pub fn run(args: KeyArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let client = args.conn.client()?;
    let json = args.conn.json;
    runtime.block_on(async {
        match args.command {
            KeyCommand::Create { name, expires_days } => {
                let created = client.create_api_key(&name, expires_days).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&created)?);
                } else {
                    eprintln!(
                        "rds: key {} created; it is shown this once:",
                        created["id"].as_str().unwrap_or_default()
                    );
                    println!("{}", created["key"].as_str().unwrap_or_default());
                }
            }
            KeyCommand::Ls => {
                let keys = client.list_api_keys().await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&keys)?);
                }
                for k in keys.iter().filter(|_| !json) {
                    let state = match (&k["revokedAt"], &k["expiresAt"]) {
                        (v, _) if !v.is_null() => "revoked".to_string(),
                        (_, e) if !e.is_null() => format!("expires {}", e),
                        _ => "active".to_string(),
                    };
                    let used = k["lastUsedAt"].as_i64().map_or("never used".to_string(), |t| format!("last used {t}"));
                    println!(
                        "{}  {}…  {}  {state}  {used}",
                        k["id"].as_str().unwrap_or_default(),
                        k["prefix"].as_str().unwrap_or_default(),
                        k["name"].as_str().unwrap_or_default()
                    );
                }
            }
            KeyCommand::Revoke { id } => {
                client.revoke_api_key(&id).await?;
                println!("revoked {id}");
            }
        }
        anyhow::Ok(())
    })
}
