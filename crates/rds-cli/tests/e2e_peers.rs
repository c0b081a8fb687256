//! End-to-end: provider VMs hold secrets; consumer VMs call them through the manager's bridge and
//! never hold the secrets themselves. Drives the real `rds serve` on the sandbox runtime.

mod common;

use std::time::Duration;

use common::Server;
use rds_testkit::tar_gz;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const SECRET_KEY: &str = "e2e-vm-secret-key-material-0123";

/// A fresh secret per run, so it exists nowhere on disk (not even in this test's source).
fn fresh_secret() -> String {
    let uuid = std::fs::read_to_string("/proc/sys/kernel/random/uuid").unwrap();
    format!("sk-live-{}", uuid.trim().replace('-', ""))
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

fn have(bin: &str) -> bool {
    std::process::Command::new(bin).arg("--version").output().is_ok_and(|o| o.status.success())
}

macro_rules! require_peers {
    () => {
        require_sandbox!();
        if !have("deno") || !have("python3") {
            rds_testkit::skip("the peer bridge tests need deno and python3");
            return;
        }
    };
}

/// Every response body the test saw, to prove no API response carried a secret.
#[derive(Default)]
struct Seen(Vec<String>);

impl Seen {
    fn call(&mut self, s: &Server, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let (st, v) = s.call(method, path, body);
        self.0.push(v.to_string());
        (st, v)
    }
}

fn upload(s: &Server, id: &str, files: &[(&str, &str)]) {
    let resp = s
        .req("POST", &format!("/v1/vms/{id}/files/upload?dest=/workspace"))
        .set("content-type", "application/gzip")
        .send_bytes(&tar_gz(&files.iter().map(|(path, text)| (*path, text.as_bytes())).collect::<Vec<_>>()))
        .unwrap();
    assert_eq!(resp.status(), 204);
}

const WEATHER_MANIFEST: &str = r#"{
  "sdk": {"name": "weather", "description": "Forecasts signed with the provider's token"},
  "exports": [
    {"name": "forecast", "module": "src/weather.ts", "description": "Forecast for a city",
     "args": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"], "additionalProperties": false},
     "returns": {"type": "object", "required": ["city", "digest"]}},
    {"name": "fails", "module": "src/weather.ts", "description": "Throws an error that mentions the token"},
    {"name": "slow", "module": "src/weather.ts", "description": "Sleeps past its timeout", "timeoutMs": 1000},
    {"name": "wait", "module": "src/weather.ts", "description": "Sleeps for a while", "timeoutMs": 60000},
    {"name": "badResult", "module": "src/weather.ts", "description": "Returns the wrong shape", "returns": {"type": "string"}}
  ]
}"#;

const WEATHER_TS: &str = r#"
async function sha256(text: string): Promise<string> {
  const d = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
  return [...new Uint8Array(d)].map((b) => b.toString(16).padStart(2, "0")).join("");
}
const token = () => Deno.env.get("WEATHER_TOKEN")!;
export async function forecast(args: { city: string }) {
  return { city: args.city, digest: await sha256(`${token()}:${args.city}`) };
}
export function fails() { throw new Error(`upstream rejected token ${token()}`); }
export async function slow() { await new Promise((r) => setTimeout(r, 5000)); return 1; }
export async function wait() { await new Promise((r) => setTimeout(r, 30000)); return 1; }
export function badResult() { return 42; }
// Exported but not declared in the manifest: must not be callable through the bridge.
export function leak() { return token(); }
"#;

const CALC_MANIFEST: &str = r#"{
  "sdk": {"name": "calc", "description": "Adds numbers, signed with the provider's key"},
  "exports": [
    {"name": "add", "module": "calc.py", "description": "a + b",
     "args": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}}
  ]
}"#;

const CALC_PY: &str = r#"
import hashlib, os

def add(args):
    total = args["a"] + args["b"]
    digest = hashlib.sha256(f"{os.environ['CALC_KEY']}:{total}".encode()).hexdigest()
    return {"sum": total, "digest": digest}
"#;

/// Two providers (TypeScript and Python) and a consumer linked to both.
struct World {
    s: Server,
    seen: Seen,
    weather_secret: String,
    calc_secret: String,
    weather: String,
    calc: String,
    consumer: String,
}

fn world() -> World {
    world_with(&[])
}

fn world_with(extra_env: &[(&str, &str)]) -> World {
    let mut env = vec![("VM_SECRET_KEY", SECRET_KEY), ("RUST_LOG", "debug")];
    env.extend_from_slice(extra_env);
    let s = Server::start(&env);
    let mut seen = Seen::default();
    let weather_secret = fresh_secret();
    let calc_secret = fresh_secret();

    let (st, w) = seen.call(
        &s,
        "POST",
        "/v1/vms",
        Some(json!({"cpu": 1, "memMb": 512, "secretEnv": [format!("WEATHER_TOKEN={weather_secret}")]})),
    );
    assert_eq!(st, 201, "{w}");
    assert_eq!(w["secretEnvKeys"], json!(["WEATHER_TOKEN"]));
    let weather = w["id"].as_str().unwrap().to_string();
    upload(&s, &weather, &[(".rds-peer/manifest.json", WEATHER_MANIFEST), ("src/weather.ts", WEATHER_TS)]);

    let (st, c) = seen.call(
        &s,
        "POST",
        "/v1/vms",
        Some(json!({"cpu": 1, "memMb": 256, "secretEnv": [format!("CALC_KEY={calc_secret}")]})),
    );
    assert_eq!(st, 201, "{c}");
    let calc = c["id"].as_str().unwrap().to_string();
    let dotenv = format!("CALC_KEY={calc_secret}\n");
    let config = format!("{{\"key\": \"{calc_secret}\"}}");
    upload(
        &s,
        &calc,
        &[
            (".rds-peer/manifest.json", CALC_MANIFEST),
            ("calc.py", CALC_PY),
            (".env", &dotenv),
            ("config.json", &config),
            ("NOTES.md", "how to use calc"),
        ],
    );

    let (st, consumer) = seen.call(
        &s,
        "POST",
        "/v1/vms",
        Some(json!({"cpu": 1, "memMb": 512, "peerLinks": [
            {"alias": "weather", "vmId": weather},
            {"alias": "calc", "vmId": calc, "sourceMode": "mirror"}
        ]})),
    );
    assert_eq!(st, 201, "{consumer}");
    let links = &consumer["peerLinks"];
    assert_eq!(links.as_array().unwrap().len(), 2, "{consumer}");
    for l in links.as_array().unwrap() {
        assert_eq!(l["syncStatus"], "synced", "{l}");
    }
    let consumer = consumer["id"].as_str().unwrap().to_string();
    World { s, seen, weather_secret, calc_secret, weather, calc, consumer }
}

impl World {
    fn run(&mut self, lang: &str, code: &str) -> Value {
        let (st, r) = self.seen.call(
            &self.s,
            "POST",
            &format!("/v1/vms/{}/run-{lang}", self.consumer),
            Some(json!({"code": code, "timeoutMs": 60000})),
        );
        assert_eq!(st, 200, "{r}");
        assert_eq!(r["exitCode"], 0, "{r}");
        r["result"].clone()
    }

    fn exec(&mut self, vm: &str, cmd: &str) -> Value {
        let (st, r) = self.seen.call(&self.s, "POST", &format!("/v1/vms/{vm}/exec"), Some(json!({"cmd": cmd})));
        assert_eq!(st, 200, "{r}");
        r
    }

    fn secrets(&self) -> [&str; 2] {
        [&self.weather_secret, &self.calc_secret]
    }

    fn assert_no_secret(&self, what: &str, text: &str) {
        for secret in self.secrets() {
            if let Some(at) = text.find(secret) {
                let context = &text[at.saturating_sub(120)..at];
                panic!("a provider secret leaked into {what}, after: {context:?}");
            }
        }
    }
}

#[test]
fn consumers_call_providers_with_their_secrets_and_never_hold_them() {
    require_peers!();
    let mut w = world();

    // The consumer sees generated, root-owned, read-only files.
    let ls = w.exec(&w.consumer.clone(), "cat /workspace/peers/index.json; stat -c '%U %a' /workspace/peers/weather/index.ts /workspace/peers/calc/README.md; ls /workspace/peers/calc/source; touch /workspace/peers/x 2>&1 || echo refused");
    let out = ls["stdout"].as_str().unwrap();
    assert!(out.contains("\"alias\": \"weather\"") && out.contains("\"alias\": \"calc\""), "{out}");
    assert!(out.contains("root 444"), "{out}");
    assert!(out.contains("calc.py") && out.contains("NOTES.md"), "{out}");
    assert!(
        !out.contains(".env") && !out.contains("config.json"),
        "mirror must drop dotenv and secret-bearing files: {out}"
    );
    assert!(out.contains("refused"), "{out}");

    // TypeScript workflow code imports the proxies and gets results computed with the secrets.
    let r = w.run(
        "ts",
        r#"import * as weather from "/workspace/peers/weather/index.ts";
           import * as calc from "/workspace/peers/calc/index.ts";
           result.set({ w: await weather.forecast({ city: "Paris" }), c: await calc.add({ a: 2, b: 3 }) });"#,
    );
    assert_eq!(r["w"]["digest"], sha256_hex(&format!("{}:Paris", w.weather_secret)), "{r}");
    assert_eq!(r["c"], json!({"sum": 5, "digest": sha256_hex(&format!("{}:5", w.calc_secret))}));

    // Python workflow code does the same through its proxies.
    let r = w.run(
        "python",
        "from peers import weather, calc\nresult = {'w': weather.forecast(city='Oslo'), 'c': calc.add(a=1, b=1)}\n",
    );
    assert_eq!(r["w"]["digest"], sha256_hex(&format!("{}:Oslo", w.weather_secret)), "{r}");
    assert_eq!(r["c"]["sum"], 2);

    // The secrets reach the provider's own processes.
    let consumer = w.consumer.clone();
    let weather = w.weather.clone();
    let env = w.exec(&weather, "printenv WEATHER_TOKEN | wc -c");
    assert_eq!(env["stdout"].as_str().unwrap().trim(), (w.weather_secret.len() + 1).to_string());
    // Even the provider's own output never carries the value back through the API.
    let echoed = w.exec(&weather, "echo \"token=$WEATHER_TOKEN\"");
    assert_eq!(echoed["stdout"], "token=[redacted:WEATHER_TOKEN]\n", "{echoed}");
    // Streamed too: a provider's NDJSON stream is its redacted result, as events.
    let streamed =
        w.s.req("POST", &format!("/v1/vms/{weather}/exec"))
            .set("Accept", "application/x-ndjson")
            .send_json(json!({"cmd": "echo \"token=$WEATHER_TOKEN\"; echo \"$WEATHER_TOKEN\" >&2; exit 3"}))
            .unwrap();
    assert_eq!(streamed.header("content-type"), Some("application/x-ndjson"));
    let events: Vec<Value> =
        streamed.into_string().unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(events[0], json!({"type": "stdout", "data": "token=[redacted:WEATHER_TOKEN]\n"}), "{events:?}");
    assert_eq!(events[1], json!({"type": "stderr", "data": "[redacted:WEATHER_TOKEN]\n"}), "{events:?}");
    assert_eq!((events[2]["type"].as_str(), events[2]["exitCode"].as_i64()), (Some("exit"), Some(3)), "{events:?}");
    w.seen.0.push(format!("{events:?}"));

    // ... and nowhere in the consumer: files it can see, environments of all its processes.
    // The patterns go in on stdin so the command line (kept in exec logs) doesn't hold them.
    let (st, grep) = w.seen.call(
        &w.s,
        "POST",
        &format!("/v1/vms/{consumer}/exec"),
        Some(json!({
            "cmd": "grep -rIl -F -f /dev/stdin /workspace /tmp /run /dev/shm /etc /home /root /var/tmp 2>/dev/null; echo scanned",
            "stdin": format!("{}\n{}\n", w.weather_secret, w.calc_secret),
        })),
    );
    assert_eq!(st, 200, "{grep}");
    assert_eq!(grep["stdout"], "scanned\n", "{grep}");
    for pid in consumer_pids(&w.s, &consumer) {
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        w.assert_no_secret(&format!("the environment of consumer process {pid}"), &String::from_utf8_lossy(&environ));
    }

    // Every API response, the exec logs, the audit log and the manager's own log are clean.
    for id in [w.weather.clone(), w.calc.clone(), consumer.clone()] {
        w.seen.call(&w.s, "GET", &format!("/v1/vms/{id}"), None);
        w.seen.call(&w.s, "GET", &format!("/v1/vms/{id}/exec-logs?limit=200"), None);
        w.seen.call(&w.s, "GET", &format!("/v1/vms/{id}/peers"), None);
        w.seen.call(&w.s, "GET", &format!("/v1/vms/{id}/logs"), None);
    }
    w.seen.call(&w.s, "GET", "/v1/vms", None);
    let (_, calls) = w.seen.call(&w.s, "GET", &format!("/v1/peer-calls?vmId={consumer}"), None);
    assert!(calls.as_array().unwrap().len() >= 4, "{calls}");
    assert!(calls.as_array().unwrap().iter().all(|c| c["consumerVmId"] == consumer.as_str()));
    let responses = w.seen.0.join("\n");
    // The provider's own printenv above is the one response that legitimately holds a length, not a secret.
    w.assert_no_secret("an API response", &responses);
    w.assert_no_secret("the manager's log", &w.s.log());

    // The database holds ciphertext only (WAL included).
    let mut db = Vec::new();
    for f in ["rds.db", "rds.db-wal"] {
        db.extend(std::fs::read(w.s.root.path().join(f)).unwrap_or_default());
    }
    w.assert_no_secret("the database file", &String::from_utf8_lossy(&db));
    assert!(String::from_utf8_lossy(&db).contains("v1:"), "sealed secrets should be in the database");
}

#[test]
fn the_bridge_refuses_what_the_link_and_manifest_do_not_allow() {
    require_peers!();
    let mut w = world();
    let consumer = w.consumer.clone();

    // Each refusal, as the consumer's code sees it (PeerError status and code).
    let r = w.run(
        "ts",
        r#"import * as weather from "/workspace/peers/weather/index.ts";
           import { callPeer } from "/workspace/peers/_rds/bridge.ts";
           const outcome = async (f: () => Promise<unknown>) => {
             try { return { ok: await f() }; } catch (e) { return { status: e.status, code: e.code, message: e.message }; }
           };
           result.set({
             unlinked: await outcome(() => callPeer("nope", "forecast", { city: "x" })),
             undeclared: await outcome(() => callPeer("weather", "leak", {})),
             badArgs: await outcome(() => weather.forecast({ city: 5 })),
             extraArg: await outcome(() => weather.forecast({ city: "x", token: "y" })),
             fails: await outcome(() => weather.fails()),
             slow: await outcome(() => weather.slow()),
             badResult: await outcome(() => weather.badResult()),
           });"#,
    );
    assert_eq!(r["unlinked"]["status"], 403, "{r}");
    assert_eq!(r["undeclared"]["status"], 404, "{r}");
    assert_eq!(r["badArgs"]["status"], 400, "{r}");
    assert!(r["badArgs"]["message"].as_str().unwrap().contains("/city"), "{r}");
    assert_eq!(r["extraArg"]["status"], 400, "{r}");
    assert_eq!(r["fails"]["status"], 502, "{r}");
    let msg = r["fails"]["message"].as_str().unwrap();
    assert!(msg.contains("[redacted:WEATHER_TOKEN]"), "{msg}");
    assert_eq!(r["slow"]["status"], 504, "{r}");
    assert_eq!(r["badResult"]["status"], 502, "{r}");
    w.assert_no_secret("a refused call's result", &r.to_string());

    // A VM without links has no bridge at all.
    let weather = w.weather.clone();
    let probe = w.exec(
        &weather,
        "python3 -c \"import socket; s=socket.socket(socket.AF_UNIX); s.connect('/run/rds/bridge/peer.sock')\" 2>&1; echo rc=$?",
    );
    assert!(probe["stdout"].as_str().unwrap().contains("rc=1"), "{probe}");

    // A second consumer linked only to calc cannot reach weather: its socket says who it is.
    let (st, other) = w.seen.call(
        &w.s,
        "POST",
        "/v1/vms",
        Some(json!({"cpu": 1, "memMb": 256, "peerLinks": [{"alias": "calc", "vmId": w.calc}]})),
    );
    assert_eq!(st, 201, "{other}");
    let other = other["id"].as_str().unwrap().to_string();
    let (st, r) = w.seen.call(
        &w.s,
        "POST",
        &format!("/v1/vms/{other}/run-ts"),
        Some(json!({"code": r#"import { callPeer } from "/workspace/peers/_rds/bridge.ts";
            try { await callPeer("weather", "forecast", { city: "x" }); result.set("called"); }
            catch (e) { result.set(e.status); }"#})),
    );
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["result"], 403, "{r}");

    // A provider stopped mid-call gives the consumer a clean error, not a hang.
    let url = format!("{}/v1/vms/{consumer}/run-ts", w.s.url);
    let key = w.s.key.clone();
    let call = std::thread::spawn(move || {
        let resp = ureq::post(&url)
            .set("X-API-Key", &key)
            .timeout(Duration::from_secs(120))
            .send_json(json!({"timeoutMs": 90000, "code": r#"import * as weather from "/workspace/peers/weather/index.ts";
                try { await weather.wait(); result.set("finished"); } catch (e) { result.set({ status: e.status, code: e.code }); }"#}));
        common::into_status_json(resp)
    });
    // Wait until the call is running inside the provider, then stop the provider.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let ps = w.exec(&weather, "ps -eo args | grep -c '[d]eno run' || true");
        if ps["stdout"].as_str().unwrap().trim() != "0" || std::time::Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(w.s.call("POST", &format!("/v1/vms/{weather}/stop"), None).0, 204);
    let (st, r) = call.join().unwrap();
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["result"]["status"], 409, "{r}");

    // The audit log has the refusals, with statuses and no argument values.
    let (_, calls) = w.seen.call(&w.s, "GET", &format!("/v1/peer-calls?vmId={consumer}"), None);
    let statuses: Vec<u64> = calls.as_array().unwrap().iter().map(|c| c["status"].as_u64().unwrap()).collect();
    for want in [403, 404, 400, 502, 504, 409] {
        assert!(statuses.contains(&want), "audit lacks {want}: {calls}");
    }
    assert!(!calls.to_string().contains("Paris"));

    // Links are validated.
    for (body, field) in [
        (json!({"cpu": 1, "memMb": 128, "peerLinks": [{"alias": "bad-alias", "vmId": w.calc}]}), "peerLinks[0].alias"),
        (json!({"cpu": 1, "memMb": 128, "peerLinks": [{"alias": "a", "vmId": "nope"}]}), "peerLinks[0].vmId"),
        (
            json!({"cpu": 1, "memMb": 128, "peerLinks": [{"alias": "a", "vmId": w.calc}, {"alias": "a", "vmId": w.calc}]}),
            "peerLinks[1].alias",
        ),
        (json!({"cpu": 1, "memMb": 128, "secretEnv": ["NOEQUALS"]}), "secretEnv[0]"),
    ] {
        let (st, e) = w.s.call("POST", "/v1/vms", Some(body));
        assert_eq!(st, 400, "{e}");
        assert!(e["error"]["message"].as_str().unwrap().contains(field), "{e}");
    }
}

#[test]
fn each_link_is_rate_limited() {
    require_peers!();
    let mut w = world_with(&[("PEER_CALLS_PER_MIN", "2")]);
    let r = w.run(
        "ts",
        r#"import * as weather from "/workspace/peers/weather/index.ts";
           import * as calc from "/workspace/peers/calc/index.ts";
           const statuses: unknown[] = [];
           for (let i = 0; i < 3; i++) {
             try { await weather.forecast({ city: "x" }); statuses.push(200); } catch (e) { statuses.push(e.status); }
           }
           // Another link has its own budget.
           const other = await calc.add({ a: 1, b: 2 });
           result.set({ statuses, other: other.sum });"#,
    );
    assert_eq!(r["statuses"], json!([200, 200, 429]), "{r}");
    assert_eq!(r["other"], 3, "{r}");
}

#[test]
fn secret_env_needs_vm_secret_key_and_can_be_rotated() {
    require_peers!();
    let s = Server::start(&[]);
    let (st, e) = s.call("POST", "/v1/vms", Some(json!({"cpu": 1, "memMb": 128, "secretEnv": ["A=b"]})));
    assert_eq!(st, 400, "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("VM_SECRET_KEY"), "{e}");
    drop(s);

    let s = Server::start(&[("VM_SECRET_KEY", SECRET_KEY)]);
    let secret = fresh_secret();
    let (st, vm) =
        s.call("POST", "/v1/vms", Some(json!({"cpu": 1, "memMb": 128, "secretEnv": [format!("OLD={secret}")]})));
    assert_eq!(st, 201, "{vm}");
    let id = vm["id"].as_str().unwrap();
    let (st, _) = s.call("PATCH", &format!("/v1/vms/{id}/secrets"), Some(json!({"secretEnv": ["NEW=rotated-value"]})));
    assert_eq!(st, 204);
    let (_, vm) = s.call("GET", &format!("/v1/vms/{id}"), None);
    assert_eq!(vm["secretEnvKeys"], json!(["NEW"]));
    let r = s.exec(id, "echo ${OLD:-none}; [ \"$NEW\" = rotated-value ] && echo new-is-set");
    assert_eq!(r["stdout"], "none\nnew-is-set\n");
}

/// Pids of every process in the consumer's sandbox, read from its cgroups on the host.
fn consumer_pids(_s: &Server, vm_id: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    let mut stack = vec![(std::path::PathBuf::from("/sys/fs/cgroup"), 0)];
    while let Some((dir, depth)) = stack.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if !e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                continue;
            }
            if e.file_name().to_string_lossy() == vm_id {
                // The VM's group and every group below it (agent, user, one per command).
                let mut groups = vec![e.path()];
                while let Some(group) = groups.pop() {
                    let procs = std::fs::read_to_string(group.join("cgroup.procs")).unwrap_or_default();
                    pids.extend(procs.lines().filter_map(|l| l.parse::<u32>().ok()));
                    let children = std::fs::read_dir(&group).into_iter().flatten().flatten();
                    groups.extend(children.filter(|c| c.file_type().is_ok_and(|t| t.is_dir())).map(|c| c.path()));
                }
            } else if depth < 6 {
                stack.push((e.path(), depth + 1));
            }
        }
    }
    pids.sort_unstable();
    pids.dedup();
    assert!(!pids.is_empty(), "found no processes of consumer {vm_id}");
    pids
}
