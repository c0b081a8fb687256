//! `rds bench peers`: a bridge call round-trip (consumer socket → manager → provider → back)
//! against the same function run directly in the provider with `run-ts`, in the same run.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};

use crate::bench::{describe, ms, percentiles, round, Api};

const MANIFEST: &str = r#"{"sdk": {"name": "echo", "description": "Echoes its arguments"},
  "exports": [{"name": "echo", "module": "echo.ts", "description": "Returns its arguments",
               "args": {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}}]}"#;
const MODULE: &str =
    "export function echo(args: { n: number }) { return { n: args.n, key: Deno.env.get(\"BENCH_KEY\")?.length }; }\n";

/// Runs the benchmark and prints its JSON line.
pub fn run(api: &Api, storage_root: &Path, calls: usize) -> anyhow::Result<()> {
    let provider = create(api, json!({"cpu": 1, "memMb": 512, "secretEnv": ["BENCH_KEY=bench-secret-value"]}))?;
    let consumer = (|| {
        let archive = rds_peer::files::pack_tar_gz(&[
            (rds_peer::MANIFEST_PATH.to_string(), MANIFEST.as_bytes().to_vec()),
            ("echo.ts".to_string(), MODULE.as_bytes().to_vec()),
        ]);
        api.agent
            .post(&format!("{}/v1/vms/{provider}/files/upload?dest=/workspace", api.url))
            .set("X-API-Key", &api.key)
            .set("content-type", "application/gzip")
            .send_bytes(&archive)
            .map_err(describe)?;
        create(api, json!({"cpu": 1, "memMb": 256, "peerLinks": [{"alias": "echo", "vmId": provider}]}))
    })();
    let result = consumer.as_ref().map_err(|e| anyhow::anyhow!("{e:#}")).and_then(|consumer| {
        let socket = storage_root.join("vms").join(consumer).join("bridge").join("peer.sock");
        let bridge = bridge_calls(&socket, calls)?;
        let direct = direct_runs(api, &provider, calls)?;
        Ok((bridge, direct))
    });
    if let Ok(c) = &consumer {
        let _ = api.delete_vm(c);
    }
    let _ = api.delete_vm(&provider);
    let (mut bridge, mut direct) = result?;
    let bridge = percentiles(&mut bridge);
    let direct = percentiles(&mut direct);
    let added = bridge["p50"].as_f64().unwrap_or(0.0) - direct["p50"].as_f64().unwrap_or(0.0);
    println!(
        "{}",
        json!({
            "bench": "peers",
            "calls": calls,
            "bridgeCallMs": bridge,
            "directRunTsMs": direct,
            "bridgeAddedMsP50": round(added),
            "ratioP50": round(bridge["p50"].as_f64().unwrap_or(0.0) / direct["p50"].as_f64().unwrap_or(1.0).max(1e-9)),
        })
    );
    Ok(())
}

fn create(api: &Api, body: Value) -> anyhow::Result<String> {
    let vm: Value = api
        .agent
        .post(&format!("{}/v1/vms", api.url))
        .set("X-API-Key", &api.key)
        .send_json(body)
        .map_err(describe)?
        .into_json()?;
    vm["id"].as_str().map(str::to_string).context("create returned no id")
}

/// The baseline: the export's own code through `run-ts` on the provider, via the manager.
fn direct_runs(api: &Api, provider: &str, n: usize) -> anyhow::Result<Vec<f64>> {
    let code = "const m = await import(\"file:///workspace/echo.ts\"); result.set(m.echo({ n: 1 }));";
    let mut out = Vec::with_capacity(n);
    for i in 0..=n {
        let t0 = Instant::now();
        let r: Value = api
            .agent
            .post(&format!("{}/v1/vms/{provider}/run-ts", api.url))
            .set("X-API-Key", &api.key)
            .send_json(json!({"code": code}))
            .map_err(describe)?
            .into_json()?;
        if r["result"]["n"] != json!(1) {
            bail!("direct run-ts failed: {r}");
        }
        if i > 0 {
            out.push(ms(t0.elapsed()));
        }
    }
    Ok(out)
}

/// Bridge calls on the consumer's own socket, as its proxies make them (one connection per call).
fn bridge_calls(socket: &Path, n: usize) -> anyhow::Result<Vec<f64>> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let body = serde_json::to_vec(&json!({"alias": "echo", "export": "echo", "args": {"n": 1}}))?;
        let mut out = Vec::with_capacity(n);
        for i in 0..=n {
            let t0 = Instant::now();
            let stream = tokio::net::UnixStream::connect(socket)
                .await
                .with_context(|| format!("connecting to {}", socket.display()))?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            let req = hyper::Request::post("/v1/call")
                .header("host", "rds-bridge")
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body.clone())))?;
            let resp = tokio::time::timeout(Duration::from_secs(60), sender.send_request(req)).await??;
            let status = resp.status();
            let bytes = resp.into_body().collect().await?.to_bytes();
            if !status.is_success() {
                bail!("bridge answered {status}: {}", String::from_utf8_lossy(&bytes));
            }
            if i > 0 {
                out.push(ms(t0.elapsed()));
            }
        }
        Ok(out)
    })
}
