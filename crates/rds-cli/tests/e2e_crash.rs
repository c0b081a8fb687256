//! Crash consistency: `kill -9` the manager at seeded random points while it creates, execs,
//! uploads, snapshots and deletes (networking on, in a test-owned network namespace), restart it,
//! and check after every round that the store matches the host: no acknowledged VM lost, no exec
//! run twice, and no process, mount, cgroup, namespace, interface, nft rule or file that no live
//! record owns.
//!
//! `RDS_CRASH_SEED` and `RDS_CRASH_ROUNDS` (default 50) rerun a failure or run longer; the seed
//! is printed first.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::{sh_in, NetNs, Server};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

/// At most this many VMs live at once (creates give way to deletes beyond it).
const MAX_VMS: usize = 4;
/// Bytes in each uploaded file: big enough for a kill to land in the middle of a transfer.
const UPLOAD_BYTES: usize = 4 << 20;

#[test]
fn kill9_at_random_points_keeps_the_store_and_the_host_in_step() {
    if let Some(reason) = common::skip_reason() {
        panic!("e2e_crash cannot run here: {reason}");
    }
    let seed: u64 = std::env::var("RDS_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(20_261_202);
    let rounds: usize = std::env::var("RDS_CRASH_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(50);
    println!("RDS_CRASH_SEED={seed} RDS_CRASH_ROUNDS={rounds}");
    let ns = NetNs::new("rdscr");
    let name = ns.0.clone();
    ns.run(move || rounds_in(&name, seed, rounds));
}

/// What the client was told about a VM.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Known {
    /// Created (201) and not deleted: must be RUNNING after every restart.
    Running,
    /// A create or delete the crash interrupted: either outcome is allowed, once.
    Unsure,
}

/// The operations a round interrupts.
#[derive(Debug, Clone, Copy)]
enum Op {
    Create,
    Exec,
    Upload,
    Snapshot,
    Delete,
}

struct Run {
    s: Server,
    ns: String,
    rng: rand::rngs::StdRng,
    vms: BTreeMap<String, Known>,
    /// Every execId sent, with the VM it was sent to: each must have run exactly once.
    exec_ids: Vec<(String, String)>,
    /// Every uploaded file (VM, name, byte seed): each must be whole after a retry.
    uploads: Vec<(String, String, u8)>,
    /// Figures for the report: rounds per operation, and how many were cut by the kill.
    tally: BTreeMap<&'static str, (u32, u32)>,
    /// The round's exec or upload, which the client retries after the restart.
    retry: Option<Op>,
    /// Retried uploads that needed a second try (see `check`).
    broken_pipes: u32,
}

fn rounds_in(ns: &str, seed: u64, rounds: usize) {
    let env = [("RDS_NETWORK", "on"), ("RDS_DNS_UPSTREAMS", "127.0.0.1")];
    let s = Server::start_in_netns(ns, "127.0.0.1", &env);
    let mut run = Run {
        s,
        ns: ns.to_string(),
        rng: rand::rngs::StdRng::seed_from_u64(seed),
        vms: BTreeMap::new(),
        exec_ids: Vec::new(),
        uploads: Vec::new(),
        tally: BTreeMap::new(),
        retry: None,
        broken_pipes: 0,
    };
    let started = Instant::now();
    for round in 0..rounds {
        let op = run.pick();
        let t = Instant::now();
        let cut = run.round(round, op);
        let restarted = secs(t);
        run.check(&format!("round {round} ({op:?})"));
        println!(
            "round {round}: {op:?}{} restarted in {restarted:.2} s, checked in {:.2} s",
            if cut { " (cut)" } else { "" },
            secs(t) - restarted
        );
    }
    // Everything left is deleted through the API, and then nothing of this manager remains.
    let ids: Vec<String> = run.vms.keys().cloned().collect();
    for id in ids {
        let (st, body) = run.s.call("DELETE", &format!("/v1/vms/{id}"), None);
        assert!(st == 204 || st == 404, "final delete of {id}: {st} {body}");
    }
    for (id, _) in run.snapshots().into_iter().filter(|(_, snap)| snap["internal"] != true) {
        assert_eq!(run.s.call("DELETE", &format!("/v1/snapshots/{id}"), None).0, 204);
    }
    run.vms.clear();
    run.check("after deleting everything");
    println!(
        "{rounds} rounds in {:.1} s; per operation (rounds, cut by the kill): {:?}; uploads that needed a second try: {}",
        secs(started),
        run.tally,
        run.broken_pipes
    );
}

impl Run {
    fn pick(&mut self) -> Op {
        let running = self.running();
        if running.is_empty() {
            return Op::Create;
        }
        match self.rng.gen_range(0..5) {
            0 if self.vms.len() < MAX_VMS => Op::Create,
            0 | 4 => Op::Delete,
            1 => Op::Exec,
            2 => Op::Upload,
            _ => Op::Snapshot,
        }
    }

    fn running(&self) -> Vec<String> {
        self.vms.iter().filter(|(_, k)| **k == Known::Running).map(|(id, _)| id.clone()).collect()
    }

    /// Starts `op`, kills the manager after a seeded delay, restarts it and settles the outcome.
    /// Returns whether the kill cut the request.
    fn round(&mut self, round: usize, op: Op) -> bool {
        let running = self.running();
        let vm = (!running.is_empty()).then(|| running[self.rng.gen_range(0..running.len())].clone());
        let (method, path, body): (&str, String, Body) = match op {
            Op::Create => (
                "POST",
                "/v1/vms".into(),
                Body::Json(json!({"cpu": 1, "memMb": 128, "outboundInternet": true, "allowIps": ["203.0.113.7"]})),
            ),
            Op::Exec => {
                let id = vm.clone().unwrap();
                let exec_id = format!("crash-{round}");
                self.exec_ids.push((id.clone(), exec_id.clone()));
                ("POST", format!("/v1/vms/{id}/exec"), Body::Json(exec_body(&exec_id)))
            }
            Op::Upload => {
                let id = vm.clone().unwrap();
                let name = format!("up-{round}");
                let fill = self.rng.gen::<u8>();
                self.uploads.push((id.clone(), name.clone(), fill));
                ("POST", format!("/v1/vms/{id}/files/upload?dest=/workspace"), Body::TarGz(upload(&name, fill)))
            }
            Op::Snapshot => ("POST", format!("/v1/vms/{}/snapshots", vm.clone().unwrap()), Body::None),
            Op::Delete => ("DELETE", format!("/v1/vms/{}", vm.clone().unwrap()), Body::None),
        };
        // Kill anywhere from before the request arrives to a little after it usually finishes
        // (debug build, this machine).
        let usual_ms = match op {
            Op::Create => 150,
            Op::Exec => 80,
            Op::Upload => 40,
            Op::Snapshot => 60,
            Op::Delete => 60,
        };
        let delay = Duration::from_micros(self.rng.gen_range(0..usual_ms * 1000));
        let (url, key) = (self.s.url.clone(), self.s.key.clone());
        let path_in_flight = path.clone();
        let request = std::thread::spawn(move || send(&url, &key, method, &path_in_flight, body));
        std::thread::sleep(delay);
        self.s.kill9();
        let answer = request.join().expect("the request thread");
        let label = match op {
            Op::Create => "create",
            Op::Exec => "exec",
            Op::Upload => "upload",
            Op::Snapshot => "snapshot",
            Op::Delete => "delete",
        };
        let cut = answer.is_err();
        self.retry = Some(op);
        let entry = self.tally.entry(label).or_default();
        entry.0 += 1;
        entry.1 += u32::from(cut);
        self.s.restart();

        match (op, answer) {
            (Op::Create, Ok((201, vm))) => {
                self.vms.insert(vm["id"].as_str().unwrap().to_string(), Known::Running);
            }
            (Op::Create, Ok((st, body))) => panic!("create answered {st}: {body}"),
            (Op::Create, Err(_)) => {
                // Whatever the crash left is listed (ERROR) or absent; nothing else may exist.
                for listed in self.listed() {
                    let id = listed["id"].as_str().unwrap().to_string();
                    self.vms.entry(id).or_insert(Known::Unsure);
                }
            }
            (Op::Delete, Ok((204, _))) => {
                self.vms.remove(vm.as_ref().unwrap());
            }
            (Op::Delete, Ok((st, body))) => panic!("delete answered {st}: {body}"),
            (Op::Delete, Err(_)) => {
                self.vms.insert(vm.clone().unwrap(), Known::Unsure);
            }
            (Op::Exec | Op::Upload | Op::Snapshot, Ok((st, body))) if st >= 300 => {
                panic!("{op:?} answered {st}: {body}\nlog:\n{}", self.s.log())
            }
            (Op::Exec | Op::Upload | Op::Snapshot, _) => {}
        }
        cut
    }

    /// `GET /v1/vms`.
    fn listed(&self) -> Vec<Value> {
        let (st, list) = self.s.call("GET", "/v1/vms", None);
        assert_eq!(st, 200, "{list}");
        list.as_array().unwrap().clone()
    }

    fn snapshots(&self) -> Vec<(String, Value)> {
        let (st, list) = self.s.call("GET", "/v1/snapshots?scope=all", None);
        assert_eq!(st, 200, "{list}");
        list.as_array().unwrap().iter().map(|s| (s["id"].as_str().unwrap().to_string(), s.clone())).collect()
    }

    /// Resolves what the crash left unsure, retries what the client would retry, then checks the
    /// store against the host.
    fn check(&mut self, label: &str) {
        let log = || self.s.log();
        let listed: BTreeMap<String, String> = self
            .listed()
            .iter()
            .map(|v| (v["id"].as_str().unwrap().to_string(), v["state"].as_str().unwrap().to_string()))
            .collect();
        for id in listed.keys() {
            assert!(self.vms.contains_key(id), "{label}: the manager lists VM {id} the client never saw");
        }
        // Every VM the client was told exists is listed and RUNNING; unsure ones are settled:
        // a delete the crash cut is retried, a half-made VM (ERROR) is deleted as a client would.
        for (id, known) in self.vms.clone() {
            let state = listed.get(&id).map(String::as_str);
            match known {
                Known::Running => {
                    assert_eq!(state, Some("RUNNING"), "{label}: acknowledged VM {id} not running\n{}", log());
                }
                Known::Unsure => match state {
                    Some("RUNNING") => {
                        self.vms.insert(id, Known::Running);
                    }
                    None => {
                        self.vms.remove(&id);
                    }
                    Some(other) => {
                        assert_eq!(other, "ERROR", "{label}: VM {id} left {other}\n{}", log());
                        let (st, body) = self.s.call("DELETE", &format!("/v1/vms/{id}"), None);
                        assert_eq!(st, 204, "{label}: delete {id}: {body}");
                        self.vms.remove(&id);
                    }
                },
            }
        }
        // The round's exec ran exactly once once the client has retried its execId; its upload is
        // whole once retried. Earlier rounds' files must still be as they were.
        let retry = self.retry.take();
        let exec = self
            .exec_ids
            .last()
            .cloned()
            .filter(|(id, _)| matches!(retry, Some(Op::Exec)) && self.vms.contains_key(id));
        if let Some((id, exec_id)) = exec {
            let (st, body) = self.s.call("POST", &format!("/v1/vms/{id}/exec"), Some(exec_body(&exec_id)));
            assert_eq!((st, &body["exitCode"]), (200, &json!(0)), "{label}: retry {exec_id}: {body}");
        }
        let upload_retry = self
            .uploads
            .last()
            .cloned()
            .filter(|(id, _, _)| matches!(retry, Some(Op::Upload)) && self.vms.contains_key(id));
        if let Some((id, name, fill)) = upload_retry {
            // Open finding (docs/reliability.md): rarely (~1 in 600 rounds) the first upload after
            // a restart gets 502 `agent_error` "Broken pipe" while its body is sent; the client's
            // second try then succeeds. Counted and reported; any other failure fails the test.
            for attempt in 1.. {
                match self.upload_once(&id, &name, fill) {
                    Ok(()) => break,
                    Err(e) if attempt == 1 && e.contains("agent_error") && e.contains("Broken pipe") => {
                        println!("{label}: upload {name}: {e}; retrying");
                        self.broken_pipes += 1;
                    }
                    Err(e) => panic!(
                        "{label}: retried upload of {name}: {e}\nlog:\n{}\nconsole:\n{}",
                        self.s.log(),
                        std::fs::read_to_string(self.s.vm_dir(&id).join("console.log")).unwrap_or_default()
                    ),
                }
            }
        }
        self.uploads.retain(|(id, _, _)| self.vms.contains_key(id));
        self.exec_ids.retain(|(id, _)| self.vms.contains_key(id));
        for id in self.running() {
            let execs: Vec<&str> = self.exec_ids.iter().filter(|(vm, _)| *vm == id).map(|(_, e)| e.as_str()).collect();
            let got = self.s.exec(&id, "sort /workspace/execs 2>/dev/null; sha256sum /workspace/up-* 2>/dev/null");
            let mut want: Vec<String> = execs.iter().map(|e| e.to_string()).collect();
            want.sort();
            let mut sums: Vec<(String, String)> = self
                .uploads
                .iter()
                .filter(|(vm, _, _)| *vm == id)
                .map(|(_, name, fill)| {
                    (name.clone(), hex::encode(<sha2::Sha256 as sha2::Digest>::digest(contents(*fill))))
                })
                .collect();
            sums.sort();
            want.extend(sums.into_iter().map(|(name, sum)| format!("{sum}  /workspace/{name}")));
            let want = want.iter().map(|l| format!("{l}\n")).collect::<String>();
            assert_eq!(got["stdout"], want, "{label}: VM {id}: each exec once, each upload whole");
        }
        let residue = self.residue();
        assert!(residue.is_empty(), "{label}: leftovers no live record owns:\n{}\nlog:\n{}", residue.join("\n"), log());
    }

    /// Uploads `name` to VM `id`; `Err` with the status and body, or the transport error.
    fn upload_once(&self, id: &str, name: &str, fill: u8) -> Result<(), String> {
        let path = format!("/v1/vms/{id}/files/upload?dest=/workspace");
        match self.s.req("POST", &path).set("content-type", "application/gzip").send_bytes(&upload(name, fill)) {
            Ok(r) if r.status() == 204 => Ok(()),
            Ok(r) => Err(format!("{} {}", r.status(), r.into_string().unwrap_or_default())),
            Err(ureq::Error::Status(st, r)) => Err(format!("{st} {}", r.into_string().unwrap_or_default())),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Host state that no RUNNING VM or ready snapshot of this manager owns.
    fn residue(&self) -> Vec<String> {
        let live: BTreeSet<String> = self.running().into_iter().collect();
        let owned = |text: &str| live.iter().any(|id| text.contains(id.as_str()));
        let mut out = Vec::new();
        let root = self.s.storage_root();
        let root_text = root.display().to_string();
        // Processes: the VMs' launchers and everything in their cgroups.
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let pid = entry.file_name().to_string_lossy().into_owned();
            if !pid.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let cmdline = String::from_utf8_lossy(&std::fs::read(entry.path().join("cmdline")).unwrap_or_default())
                .replace('\0', " ");
            let cgroup = std::fs::read_to_string(entry.path().join("cgroup")).unwrap_or_default();
            let ours =
                cmdline.contains(&root_text) && !cmdline.contains(" serve") || cgroup.contains(&self.s.cgroup_group());
            if ours && !owned(&cmdline) && !owned(&cgroup) {
                out.push(format!("process {pid}: {cmdline}"));
            }
        }
        // Mounts under the storage root (each VM's root, workspace, proc...).
        for line in std::fs::read_to_string("/proc/self/mountinfo").unwrap().lines() {
            if line.contains(&root_text) && !owned(line) {
                out.push(format!("mount: {line}"));
            }
        }
        // Cgroups beneath this manager's group, every controller.
        let layout = rds_runtime::cgroup::CgroupLayout::detect(&self.s.cgroup_group()).expect("cgroup layout");
        for id in layout.vm_ids() {
            if !live.contains(&id) {
                out.push(format!("cgroup: {id}"));
            }
        }
        // Per-VM directories and snapshot files.
        for entry in std::fs::read_dir(root.join("vms")).into_iter().flatten().flatten() {
            let id = entry.file_name().to_string_lossy().into_owned();
            if !live.contains(&id) {
                out.push(format!("file: {}", entry.path().display()));
            }
        }
        let snapshots: BTreeSet<String> = self.snapshots().into_iter().map(|(id, _)| id).collect();
        for entry in std::fs::read_dir(root.join("snapshots")).into_iter().flatten().flatten() {
            let id = entry.file_name().to_string_lossy().into_owned();
            if !snapshots.contains(&id) {
                out.push(format!("snapshot file: {}", entry.path().display()));
            }
        }
        for (id, snap) in self.snapshots() {
            if snap["state"].as_str().is_some_and(|s| s != "ready") {
                out.push(format!("snapshot {id} listed as {}", snap["state"]));
            }
        }
        // Interfaces, nft rules and named namespaces in the test's network namespace.
        let prefix = format!("rds{}", self.s.installation_id);
        let links = sh_in(&self.ns, "ip", &["-o", "link", "show"]);
        let ours = links.lines().filter(|l| l.split_whitespace().nth(1).is_some_and(|n| n.starts_with(&prefix)));
        let live_links = ours.count();
        if live_links != live.len() {
            out.push(format!("{live_links} interfaces for {} running VMs:\n{links}", live.len()));
        }
        let table = format!("rds-{}", self.s.installation_id);
        let ruleset = sh_in(&self.ns, "nft", &["list", "ruleset"]);
        for line in ruleset.lines().filter(|l| l.contains("vm=")) {
            if !owned(line) {
                out.push(format!("nft ({table}): {}", line.trim()));
            }
        }
        for entry in std::fs::read_dir("/run/netns").into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.contains(&self.s.installation_id) && !owned(&name) {
                out.push(format!("netns: {name}"));
            }
        }
        out
    }
}

enum Body {
    None,
    Json(Value),
    TarGz(Vec<u8>),
}

/// One request; `Err` when the connection died (the kill landed before the answer).
fn send(url: &str, key: &str, method: &str, path: &str, body: Body) -> Result<(u16, Value), String> {
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(120)).build();
    let req = agent.request(method, &format!("{url}{path}")).set("X-API-Key", key);
    let res = match body {
        Body::None => req.call(),
        Body::Json(v) => req.send_json(v),
        Body::TarGz(bytes) => req.set("content-type", "application/gzip").send_bytes(&bytes),
    };
    match res {
        Ok(r) => Ok((r.status(), r.into_json().unwrap_or(Value::Null))),
        Err(ureq::Error::Status(st, r)) => Ok((st, r.into_json().unwrap_or(Value::Null))),
        Err(e) => Err(e.to_string()),
    }
}

/// The request of exec `exec_id`: appends its id to `/workspace/execs` (a retry must send it again).
fn exec_body(exec_id: &str) -> Value {
    json!({"cmd": format!("sleep 0.05; echo {exec_id} >> /workspace/execs"), "execId": exec_id})
}

/// A tar.gz holding `name` with [`contents`]`(seed)`.
fn upload(name: &str, seed: u8) -> Vec<u8> {
    rds_testkit::tar_gz(&[(name, &contents(seed))])
}

/// UPLOAD_BYTES that do not compress, so the transfer takes long enough for a kill to cut it.
fn contents(seed: u8) -> Vec<u8> {
    let mut bytes = vec![0; UPLOAD_BYTES];
    rand::rngs::StdRng::seed_from_u64(seed.into()).fill(&mut bytes[..]);
    bytes
}

fn secs(since: Instant) -> f64 {
    since.elapsed().as_secs_f64()
}
