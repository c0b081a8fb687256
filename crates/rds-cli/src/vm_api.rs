//! `rds vm create|ls|get|rm|start|stop|exec|run|cp|logs|snapshot`: the manager's API from the
//! command line, through `rds-client`. Each returns the process's exit status.

use std::io::{Read, Write};
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use rds_client::{Client, CreateVm, ExecEvent, ExecRequest, Language, PeerLink, RunRequest, Vm};
use serde::Serialize;

use crate::vm::Conn;

/// Flags of `rds vm create`.
#[derive(clap::Args)]
pub struct CreateArgs {
    #[arg(long, default_value_t = 1)]
    cpu: u32,
    /// Memory in MiB.
    #[arg(long, default_value_t = 256)]
    mem: u32,
    /// Size of /workspace in MiB.
    #[arg(long)]
    disk: Option<u32>,
    /// Guest image id (default: the manager's default).
    #[arg(long)]
    image: Option<String>,
    /// A provider secret, `KEY=value` (repeatable).
    #[arg(long = "secret", value_name = "KEY=VALUE")]
    secrets: Vec<String>,
    /// A provider this VM may call, `alias=VM_ID` (repeatable).
    #[arg(long = "peer", value_name = "ALIAS=VM_ID")]
    peers: Vec<String>,
    /// Allow egress to this address or CIDR (repeatable; needs --outbound).
    #[arg(long = "allow-ip")]
    allow_ips: Vec<String>,
    /// Allow egress to this domain (repeatable).
    #[arg(long = "allow-domain")]
    allow_domains: Vec<String>,
    /// Allow outbound network access to the allowed destinations.
    #[arg(long)]
    outbound: bool,
    /// Start from this snapshot.
    #[arg(long)]
    snapshot: Option<String>,
}

/// Flags of `rds vm exec`.
#[derive(clap::Args)]
pub struct ExecArgs {
    id: String,
    /// Working directory (under /workspace).
    #[arg(long)]
    cwd: Option<String>,
    /// An environment variable, `KEY=value` (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// Send this command's stdin (read to its end first) to the command.
    #[arg(long)]
    stdin: bool,
    /// The command, run by bash.
    #[arg(trailing_var_arg = true, required = true, allow_hyphen_values = true)]
    cmd: Vec<String>,
}

/// Languages of `rds vm run`.
#[derive(Clone, Copy, clap::ValueEnum)]
enum Lang {
    Ts,
    Js,
    Python,
}

/// Flags of `rds vm run`.
#[derive(clap::Args)]
pub struct RunArgs {
    id: String,
    #[arg(long, value_enum)]
    lang: Lang,
    /// The code (instead of a file).
    #[arg(short = 'c', long = "code", conflicts_with = "file")]
    code: Option<String>,
    /// A local file holding the code.
    #[arg(required_unless_present = "code")]
    file: Option<std::path::PathBuf>,
    /// Run in this code context (its state kept between runs).
    #[arg(long)]
    context: Option<String>,
    #[arg(long)]
    timeout_ms: Option<u64>,
}

fn pairs(flag: &str, values: &[String]) -> Result<Vec<(String, String)>> {
    values
        .iter()
        .map(|v| match v.split_once('=') {
            Some((k, val)) if !k.is_empty() => Ok((k.to_string(), val.to_string())),
            _ => bail!("--{flag} wants KEY=VALUE (got {v:?})"),
        })
        .collect()
}

fn print_json(value: &impl Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn describe(vm: &Vm) -> String {
    let image = vm.image_id.as_deref().unwrap_or("default");
    format!(
        "{}  {}  {}/{}  cpu {}  mem {} MiB  disk {} MiB  image {image}",
        vm.id, vm.state, vm.runtime, vm.isolation, vm.cpu, vm.mem_mb, vm.disk_size_mb
    )
}

pub async fn create(c: &Conn, a: CreateArgs) -> Result<i32> {
    let peer_links = pairs("peer", &a.peers)?
        .into_iter()
        .map(|(alias, vm_id)| PeerLink { alias, vm_id, source_mode: None })
        .collect();
    pairs("secret", &a.secrets)?;
    let req = CreateVm {
        cpu: a.cpu,
        mem_mb: a.mem,
        disk_size_mb: a.disk,
        image_id: a.image,
        outbound_internet: a.outbound.then_some(true),
        allow_ips: a.allow_ips,
        allow_domains: a.allow_domains,
        secret_env: a.secrets,
        peer_links,
        snapshot_id: a.snapshot,
    };
    let vm = c.client()?.create_vm(&req).await?;
    if c.json {
        print_json(&vm)?;
    } else {
        println!("{}", vm.id);
    }
    Ok(0)
}

pub async fn ls(c: &Conn) -> Result<i32> {
    let vms = c.client()?.list_vms().await?;
    if c.json {
        print_json(&vms)?;
    } else {
        for vm in &vms {
            println!("{}", describe(vm));
        }
    }
    Ok(0)
}

pub async fn get(c: &Conn, id: &str) -> Result<i32> {
    let vm = c.client()?.get_vm(id).await?;
    if c.json {
        print_json(&vm)?;
    } else {
        println!("{}", describe(&vm));
    }
    Ok(0)
}

pub async fn rm(c: &Conn, ids: &[String]) -> Result<i32> {
    let client = c.client()?;
    for id in ids {
        client.delete_vm(id).await.with_context(|| format!("deleting {id}"))?;
        if !c.json {
            println!("deleted {id}");
        }
    }
    Ok(0)
}

pub async fn start(c: &Conn, id: &str) -> Result<i32> {
    let client = c.client()?;
    client.start_vm(id).await?;
    get(c, id).await
}

pub async fn stop(c: &Conn, id: &str) -> Result<i32> {
    let client = c.client()?;
    client.stop_vm(id).await?;
    get(c, id).await
}

/// The shell's convention for how a command ended: its status, 128 + a signal, 124 on timeout.
fn exit_status(code: Option<i32>, signal: Option<i32>, timed_out: bool) -> i32 {
    match (code, signal) {
        (Some(code), _) => code,
        _ if timed_out => 124,
        (None, Some(signal)) => 128 + signal,
        (None, None) => 1,
    }
}

pub async fn exec(c: &Conn, a: ExecArgs) -> Result<i32> {
    let env = pairs("env", &a.env)?;
    let stdin = if a.stdin {
        let mut input = String::new();
        std::io::stdin().read_to_string(&mut input).context("reading stdin (it must be UTF-8 text)")?;
        Some(input)
    } else {
        None
    };
    let req = ExecRequest {
        cmd: a.cmd.join(" "),
        cwd: a.cwd,
        env: (!env.is_empty()).then(|| rds_proto::EnvMap(env.into_iter().collect())),
        stdin,
        timeout_ms: a.timeout_ms,
        ..Default::default()
    };
    let client = c.client()?;
    if c.json {
        let result = client.exec(&a.id, &req).await?;
        print_json(&result)?;
        return Ok(exit_status(result.exit_code, result.signal, result.timed_out));
    }
    let exit = client
        .exec_stream(&a.id, &req, |event| {
            let _ = match event {
                ExecEvent::Stdout { data } => {
                    std::io::stdout().write_all(data.as_bytes()).and_then(|_| std::io::stdout().flush())
                }
                ExecEvent::Stderr { data } => std::io::stderr().write_all(data.as_bytes()),
                ExecEvent::Exit(_) => Ok(()),
            };
        })
        .await?;
    if exit.timed_out {
        eprintln!("rds: the command timed out");
    }
    Ok(exit_status(exit.exit_code, exit.signal, exit.timed_out))
}

pub async fn run_code(c: &Conn, a: RunArgs) -> Result<i32> {
    let code = match (a.code, &a.file) {
        (Some(code), _) => code,
        (None, Some(file)) => std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?,
        (None, None) => bail!("give the code with -c or a file"),
    };
    let language = match a.lang {
        Lang::Ts => Language::Ts,
        Lang::Js => Language::Js,
        Lang::Python => Language::Python,
    };
    let req = RunRequest { code: Some(code), context_id: a.context, timeout_ms: a.timeout_ms, ..Default::default() };
    let result = c.client()?.run(&a.id, language, &req).await?;
    if c.json {
        print_json(&result)?;
    } else {
        print!("{}", result.stdout);
        eprint!("{}", result.stderr);
        if let Some(error) = &result.error {
            eprintln!("{}", serde_json::to_string_pretty(error)?);
        }
        if let Some(value) = &result.result {
            println!("{}", serde_json::to_string(value)?);
        }
    }
    Ok(exit_status(result.exit_code, result.signal, result.timed_out))
}

/// `VM:/path` → (VM, path); a local path → None.
fn remote(spec: &str) -> Option<(&str, &str)> {
    let (vm, path) = spec.split_once(':')?;
    (!vm.is_empty() && !vm.contains('/') && !path.is_empty()).then_some((vm, path))
}

pub async fn cp(c: &Conn, src: &str, dst: &str) -> Result<i32> {
    let client = c.client()?;
    let started = Instant::now();
    match (remote(src), remote(dst)) {
        (None, Some((vm, dest))) => {
            let local = Path::new(src);
            eprintln!("rds: packing {} …", local.display());
            let size = upload(&client, vm, local, dest).await?;
            eprintln!("rds: uploaded {} to {vm}:{dest} in {:.1}s", human(size), started.elapsed().as_secs_f64());
        }
        (Some((vm, path)), None) => {
            eprintln!("rds: downloading {vm}:{path} …");
            let written = client.download_into(vm, path, Path::new(dst)).await?;
            eprintln!("rds: {} files into {dst} in {:.1}s", written.len(), started.elapsed().as_secs_f64());
            if c.json {
                print_json(&written)?;
            }
        }
        (Some(_), Some(_)) => bail!("copy between VMs through a local directory (one side must be local)"),
        (None, None) => bail!("one side must be VM:/path (e.g. rds vm cp ./src {}:/workspace/src)", "<vm-id>"),
    }
    Ok(0)
}

async fn upload(client: &Client, vm: &str, local: &Path, dest: &str) -> Result<u64> {
    if !local.exists() {
        bail!("{} does not exist", local.display());
    }
    let progress = crate::progress::bar(format!("uploading {}", local.display()));
    Ok(client.upload_path_reporting(vm, local, dest, progress).await?)
}

fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / (1 << 10) as f64),
        b => format!("{b} B"),
    }
}

pub async fn logs(c: &Conn, id: &str, log_type: Option<&str>, tail: Option<u32>) -> Result<i32> {
    let view = c.client()?.logs(id, log_type, tail).await?;
    if c.json {
        print_json(&view)?;
    } else {
        for line in view["lines"].as_array().into_iter().flatten() {
            println!("{}", line.as_str().unwrap_or_default());
        }
    }
    Ok(0)
}

pub async fn snapshot(c: &Conn, id: &str, memory: bool) -> Result<i32> {
    let snap = c.client()?.create_snapshot(id, memory.then_some(true)).await?;
    if c.json {
        print_json(&snap)?;
    } else {
        println!("{}", snap.id);
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_paths_name_a_vm_and_local_ones_do_not() {
        assert_eq!(remote("vm-1:/workspace/x"), Some(("vm-1", "/workspace/x")));
        assert_eq!(remote("./dir"), None);
        assert_eq!(remote("/tmp/a:b"), None);
        assert_eq!(remote("vm-1:"), None);
    }

    #[test]
    fn exit_statuses_follow_the_shell() {
        assert_eq!(exit_status(Some(3), None, false), 3);
        assert_eq!(exit_status(None, Some(9), false), 137);
        assert_eq!(exit_status(None, None, true), 124);
    }

    #[test]
    fn key_value_flags_are_checked() {
        assert_eq!(pairs("env", &["A=1=2".into()]).unwrap(), [("A".into(), "1=2".into())]);
        assert!(pairs("env", &["=x".into()]).unwrap_err().to_string().contains("--env"));
    }
}
