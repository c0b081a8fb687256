//! `rds-agent bench run`: run-ts / run-js / run-python of a trivial result through a real agent,
//! warm pool off (every run starts its interpreter) and on, and in a code context, beside bare
//! starts of the same interpreters in the same run.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use rds_agent_client::AgentClient;
use rds_proto::{ContextLanguage, ContextRequest, Language, RunRequest};
use serde_json::Value;

use super::{percentile_ms, round, vm_rss_kib, BenchAgent, CALL_LIMIT};
use crate::exec::process::find_program;

/// One language as the bench drives it: its label, interpreter and trivial snippet.
struct Lang {
    label: &'static str,
    language: Language,
    program: &'static str,
    code: &'static str,
    /// The wrapper its interpreters run (to find the waiting ones).
    wrapper: &'static str,
}

const LANGS: [Lang; 3] = [
    Lang { label: "ts", language: Language::Ts, program: "deno", code: "result.set(1)", wrapper: "/wrapper.mjs" },
    Lang { label: "js", language: Language::Js, program: "node", code: "result.set(1)", wrapper: "/wrapper.mjs" },
    Lang {
        label: "python",
        language: Language::Python,
        program: "python3",
        code: "result = 1",
        wrapper: "/wrapper.py",
    },
];

/// Figures in the order they are printed.
type Figures = Vec<(String, Value)>;

/// Runs the bench and prints its JSON line.
pub(super) fn bench(bin: &Path, dir: &Path, calls: usize, gap: Duration) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let langs: Vec<&Lang> = LANGS.iter().filter(|l| find_program(l.program).is_some()).collect();
    anyhow::ensure!(!langs.is_empty(), "none of deno, node, python3 is installed");
    let mut figures: Figures = vec![
        ("bench".into(), "run".into()),
        ("calls".into(), calls.into()),
        ("gap_ms".into(), (gap.as_millis() as u64).into()),
    ];

    let bare = bare_figures(dir, calls, gap, &mut figures)?;

    let mut p50 = std::collections::BTreeMap::new();
    for (mode, pool) in [("cold", "0"), ("warm", "1")] {
        let mut agent = BenchAgent::start(bin, dir, mode, &[("RDS_AGENT_WARM_POOL", pool)], &runtime)?;
        let client = AgentClient::hybrid_vsock(&agent.socket);
        for lang in &langs {
            let timed = runtime.block_on(time_runs(&client, lang, calls, gap))?;
            let (a, b) = (percentile_ms(&timed, 0.50), percentile_ms(&timed, 0.95));
            figures.push((format!("{mode}_{}_p50_ms", lang.label), round(a).into()));
            figures.push((format!("{mode}_{}_p95_ms", lang.label), round(b).into()));
            p50.insert((mode, lang.label), a);
            if mode == "warm" {
                let timed = runtime.block_on(time_runs(&client, lang, calls, Duration::ZERO))?;
                let (a, b) = (percentile_ms(&timed, 0.50), percentile_ms(&timed, 0.95));
                figures.push((format!("warm_back_to_back_{}_p50_ms", lang.label), round(a).into()));
                figures.push((format!("warm_back_to_back_{}_p95_ms", lang.label), round(b).into()));
                let (timed, rss) =
                    runtime.block_on(time_context_runs(&client, agent.process.0.id(), lang, calls, gap))?;
                let (a, b) = (percentile_ms(&timed, 0.50), percentile_ms(&timed, 0.95));
                figures.push((format!("context_{}_p50_ms", lang.label), round(a).into()));
                figures.push((format!("context_{}_p95_ms", lang.label), round(b).into()));
                figures.push((format!("context_rss_kib_{}", lang.label), rss.into()));
            }
        }
        if mode == "warm" {
            // What the waiting interpreters cost, once they have settled.
            std::thread::sleep(gap.max(Duration::from_millis(500)));
            for lang in &langs {
                let rss: u64 = waiting_interpreters(agent.process.0.id(), lang.program, lang.wrapper)
                    .into_iter()
                    .filter_map(|pid| vm_rss_kib(pid).ok())
                    .sum();
                figures.push((format!("pool_rss_kib_{}", lang.label), rss.into()));
            }
        }
        // SIGTERM: the agent stops its waiting interpreters and removes its runs directory.
        agent.process.stop();
    }
    for lang in &langs {
        let Some(bare) = bare.get(lang.label) else { continue };
        for mode in ["cold", "warm"] {
            if let Some(run) = p50.get(&(mode, lang.label)) {
                figures.push((format!("ratio_{mode}_{}_p50", lang.label), round(run / bare).into()));
            }
        }
    }
    let body: Vec<String> = figures.iter().map(|(k, v)| format!("{}:{v}", Value::from(k.as_str()))).collect();
    println!("{{{}}}", body.join(","));
    Ok(())
}

/// Times bare starts of each installed interpreter; returns the baseline each language's ratio
/// is taken against (`deno run` of a file for ts, as the agent starts Deno).
fn bare_figures(
    dir: &Path,
    calls: usize,
    gap: Duration,
    figures: &mut Figures,
) -> anyhow::Result<std::collections::BTreeMap<&'static str, f64>> {
    let one = dir.join("one.js");
    std::fs::write(&one, "1\n").context("writing the bare deno module")?;
    let one = one.display().to_string();
    let cases: [(&str, &str, &str, Vec<&str>); 4] = [
        ("deno_eval", "deno", "", vec!["eval", "1"]),
        ("deno_run", "deno", "ts", vec!["run", "--quiet", &one]),
        ("node", "node", "js", vec!["-e", "0"]),
        ("python", "python3", "python", vec!["-c", "pass"]),
    ];
    let mut baselines = std::collections::BTreeMap::new();
    for (label, program, lang, args) in cases {
        let Some(path) = find_program(program) else { continue };
        let mut samples = Vec::with_capacity(calls);
        for _ in 0..calls {
            std::thread::sleep(gap);
            let start = Instant::now();
            let status = Command::new(&path)
                .args(&args)
                .env("DENO_NO_UPDATE_CHECK", "1")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .status()?;
            samples.push(start.elapsed());
            anyhow::ensure!(status.success(), "bare {program} {args:?} failed");
        }
        let (a, b) = (percentile_ms(&samples, 0.50), percentile_ms(&samples, 0.95));
        figures.push((format!("bare_{label}_p50_ms"), round(a).into()));
        figures.push((format!("bare_{label}_p95_ms"), round(b).into()));
        if !lang.is_empty() {
            baselines.insert(lang, a);
        }
    }
    Ok(baselines)
}

/// `calls` timed runs of `lang`'s trivial snippet, each after `gap`, after three untimed ones
/// (the first run of a language starts its pool).
async fn time_runs(client: &AgentClient, lang: &Lang, calls: usize, gap: Duration) -> anyhow::Result<Vec<Duration>> {
    let request = RunRequest { code: Some(lang.code.into()), ..RunRequest::default() };
    for _ in 0..3 {
        run(client, lang, &request).await?;
        tokio::time::sleep(gap.max(Duration::from_millis(300))).await;
    }
    let mut samples = Vec::with_capacity(calls);
    for _ in 0..calls {
        tokio::time::sleep(gap).await;
        let start = Instant::now();
        run(client, lang, &request).await?;
        samples.push(start.elapsed());
    }
    Ok(samples)
}

/// `calls` timed runs of `lang`'s trivial snippet in one code context (created, then deleted);
/// also the resident memory of the context's interpreter.
async fn time_context_runs(
    client: &AgentClient,
    agent: u32,
    lang: &Lang,
    calls: usize,
    gap: Duration,
) -> anyhow::Result<(Vec<Duration>, u64)> {
    let language = match lang.language {
        Language::Ts => ContextLanguage::Typescript,
        Language::Js => ContextLanguage::Javascript,
        Language::Python => ContextLanguage::Python,
    };
    let create = ContextRequest { language, cwd: None, env: None, idle_timeout_ms: None, allow_net: None };
    let context = client.create_context(&create, CALL_LIMIT).await.context("creating a code context")?;
    let request = RunRequest {
        code: Some(lang.code.into()),
        context_id: Some(context.context_id.clone()),
        ..RunRequest::default()
    };
    run(client, lang, &request).await?;
    let mut samples = Vec::with_capacity(calls);
    for _ in 0..calls {
        tokio::time::sleep(gap).await;
        let start = Instant::now();
        run(client, lang, &request).await?;
        samples.push(start.elapsed());
    }
    let kernel = if lang.language == Language::Python { "/kernel.py" } else { "/kernel.mjs" };
    let rss =
        waiting_interpreters(agent, lang.program, kernel).into_iter().filter_map(|pid| vm_rss_kib(pid).ok()).sum();
    client.delete_context(&context.context_id, CALL_LIMIT).await.context("deleting the code context")?;
    Ok((samples, rss))
}

async fn run(client: &AgentClient, lang: &Lang, request: &RunRequest) -> anyhow::Result<()> {
    let result = client.run(lang.language, request, CALL_LIMIT).await.with_context(|| format!("run-{}", lang.label))?;
    anyhow::ensure!(
        result.exit_code == Some(0) && result.result == Some(Value::from(1)),
        "run-{} of a trivial result failed: {result:?}",
        lang.label
    );
    Ok(())
}

/// Children of `agent` running `program` with `wrapper` (a run wrapper: its waiting interpreters;
/// a kernel: its code contexts).
fn waiting_interpreters(agent: u32, program: &str, wrapper: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| rds_host::ProcStat::read(*pid).is_some_and(|s| s.ppid == agent as i32 && s.is_live()))
        .filter(|pid| {
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
            let cmdline = String::from_utf8_lossy(&cmdline);
            let argv0 = cmdline.split('\0').next().unwrap_or_default();
            Path::new(argv0).file_name().is_some_and(|name| name == program)
                && cmdline.contains(&format!("{wrapper}\0"))
        })
        .map(|pid| pid as u32)
        .collect()
}
