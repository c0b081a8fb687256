//! Drop-in compatibility of `run-ts` / `run-python` permissions with the original, through a real
//! `rds serve`: runs get the system files ordinary code needs and a writable `/var/tmp` without
//! any `allow*` field, and Deno's network grant follows the VM's egress policy (the firewall picks
//! destinations), which a request can narrow but never widen.
//!
//! The manager runs in a test-owned network namespace with a second one as its "internet":
//!
//! ```text
//!   sandboxes ── mgr ns: rds serve, nft ── up0 11.22.0.1 ── up1 11.22.0.2 ── inet ns: X, Y (TCP :80)
//! ```

mod common;

use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use common::{NetNs, Server};
use serde_json::{json, Value};

const X: &str = "11.22.33.10";
const Y: &str = "11.22.33.20";
const UPSTREAM_DNS: &str = "11.22.33.53";

fn skip_reason() -> Option<String> {
    if let Some(reason) = common::skip_reason() {
        return Some(reason);
    }
    for (tool, arg) in [("ip", "-V"), ("nft", "--version"), ("nsenter", "--version"), ("deno", "--version")] {
        let ok = Command::new(tool).arg(arg).stdout(Stdio::null()).stderr(Stdio::null()).status();
        if !ok.is_ok_and(|s| s.success()) {
            return Some(format!("`{tool}` is not installed"));
        }
    }
    None
}

/// Runs `ip <args>`, panicking with its stderr on failure.
fn ip(args: &[&str]) {
    let output = Command::new("ip").args(args).output().expect("spawn ip");
    assert!(output.status.success(), "ip {} failed: {}", args.join(" "), String::from_utf8_lossy(&output.stderr));
}

/// A TCP greeter on `addr` in `ns` (writes `reply`, closes) until `stop`.
fn tcp_server(ns: &NetNs, addr: SocketAddr, reply: &'static str, stop: Arc<AtomicBool>) {
    let (ready_tx, ready_rx) = mpsc::channel();
    let path = format!("/run/netns/{}", ns.0);
    std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        let file = std::fs::File::open(&path).expect("open netns");
        // SAFETY: setns on an fd we own; it changes only this thread's network namespace.
        assert_eq!(unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "setns {path}");
        let listener = TcpListener::bind(addr).expect("bind tcp server");
        listener.set_nonblocking(true).unwrap();
        ready_tx.send(()).unwrap();
        while !stop.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok((mut stream, _)) => {
                    let _ = std::io::Write::write_all(&mut stream, reply.as_bytes());
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    });
    ready_rx.recv_timeout(Duration::from_secs(5)).expect("tcp server ready");
}

/// Deno snippet: the net permission state and one TCP probe per address (`open:<greeting>`,
/// `timeout`, or `error:<name>`); exits at once so a dropped SYN does not keep Deno alive.
fn probe_ts(hosts: &[&str]) -> String {
    format!(
        r#"
async function probe(host) {{
  try {{
    const conn = await Promise.race([
      Deno.connect({{ hostname: host, port: 80 }}),
      new Promise((_, reject) => setTimeout(() => reject(new Error("timeout")), 2000)),
    ]);
    const buf = new Uint8Array(16);
    const n = await conn.read(buf);
    conn.close();
    return "open:" + new TextDecoder().decode(buf.subarray(0, n ?? 0));
  }} catch (e) {{
    return e.message === "timeout" ? "timeout" : "error:" + e.name;
  }}
}}
const out = {{ net: (await Deno.permissions.query({{ name: "net" }})).state }};
for (const host of {hosts}) out[host] = await probe(host);
result.set(out);
process.exit(0);
"#,
        hosts = serde_json::to_string(hosts).unwrap()
    )
}

fn run(s: &Server, id: &str, lang: &str, body: Value) -> Value {
    let (st, r) = s.call("POST", &format!("/v1/vms/{id}/run-{lang}"), Some(body));
    assert_eq!(st, 200, "run-{lang}: {r}");
    r
}

fn create(s: &Server, body: Value) -> String {
    let (st, vm) = s.call("POST", "/v1/vms", Some(body));
    assert_eq!(st, 201, "create: {vm}");
    vm["id"].as_str().unwrap().to_string()
}

#[test]
fn run_permissions_follow_the_vm_policy_like_the_original() {
    if let Some(reason) = skip_reason() {
        rds_testkit::skip(reason);
        return;
    }
    permissions_follow_policy(Vec::new());
}

/// The same on qemu microVMs, whose guest mounts its own `/tmp` and `/var/tmp`.
#[test]
fn qemu_run_permissions_follow_the_vm_policy_like_the_original() {
    let image = match skip_reason().map_or_else(common::qemu_image_dir, Err) {
        Ok(image) => image,
        Err(reason) => {
            rds_testkit::skip(reason);
            return;
        }
    };
    permissions_follow_policy(vec![
        ("RDS_RUNTIME".into(), "qemu".into()),
        ("RDS_IMAGE_DIR".into(), image.to_string_lossy().into_owned()),
    ]);
}

/// Builds the fake internet, then runs [`scenario`] against a manager started with `env`.
fn permissions_follow_policy(env: Vec<(String, String)>) {
    let mgr = NetNs::new("rdscr");
    let inet = NetNs::new("rdsci");
    ip(&["-n", &mgr.0, "link", "add", "up0", "type", "veth", "peer", "name", "up1", "netns", &inet.0]);
    ip(&["-n", &mgr.0, "addr", "add", "11.22.0.1/24", "dev", "up0"]);
    ip(&["-n", &mgr.0, "link", "set", "up0", "up"]);
    ip(&["-n", &mgr.0, "route", "add", "default", "via", "11.22.0.2"]);
    ip(&["-n", &inet.0, "addr", "add", "11.22.0.2/24", "dev", "up1"]);
    ip(&["-n", &inet.0, "link", "set", "up1", "up"]);
    for addr in [X, Y] {
        ip(&["-n", &inet.0, "addr", "add", &format!("{addr}/32"), "dev", "lo"]);
    }
    let stop = Arc::new(AtomicBool::new(false));
    tcp_server(&inet, SocketAddr::new(X.parse().unwrap(), 80), "X", stop.clone());
    tcp_server(&inet, SocketAddr::new(Y.parse().unwrap(), 80), "Y", stop.clone());

    let ns = mgr.0.clone();
    let outcome = std::panic::catch_unwind(|| mgr.run(move || scenario(&ns, &env)));
    stop.store(true, Ordering::SeqCst);
    drop((mgr, inet));
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

fn scenario(ns: &str, env: &[(String, String)]) {
    let mut all = vec![("RDS_NETWORK", "on"), ("RDS_DNS_UPSTREAMS", UPSTREAM_DNS), ("RATE_LIMIT_PER_MIN", "0")];
    all.extend(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let s = Server::start_in_netns(ns, "0.0.0.0", &all);
    let closed = create(&s, json!({"cpu": 1, "memMb": 256}));
    let egress = create(&s, json!({"cpu": 1, "memMb": 256, "outboundInternet": true, "allowIps": [X]}));

    // System files and /var/tmp, with no allow* field at all.
    let ts = r#"
const resolv = Deno.readTextFileSync("/etc/resolv.conf");
const hosts = Deno.readTextFileSync("/etc/hosts");
Deno.statSync("/etc/nsswitch.conf");
Deno.readDirSync("/etc/ssl/certs");
Deno.writeTextFileSync("/var/tmp/x", "from deno");
result.set({ resolv: resolv.includes("nameserver"), hosts: hosts.length > 0, x: Deno.readTextFileSync("/var/tmp/x") });
"#;
    let py = r#"
import os
resolv = open("/etc/resolv.conf").read()
hosts = open("/etc/hosts").read()
os.stat("/etc/nsswitch.conf")
os.listdir("/etc/ssl/certs")
with open("/var/tmp/x", "w") as f:
    f.write("from python")
result = {"resolv": "nameserver" in resolv, "hosts": len(hosts) > 0, "x": open("/var/tmp/x").read()}
"#;
    for id in [&closed, &egress] {
        let r = run(&s, id, "ts", json!({"code": ts}));
        assert_eq!(r["result"], json!({"resolv": true, "hosts": true, "x": "from deno"}), "run-ts: {r}");
        assert_eq!(r["exitCode"], 0, "{r}");
        let r = run(&s, id, "python", json!({"code": py}));
        assert_eq!(r["result"], json!({"resolv": true, "hosts": true, "x": "from python"}), "run-python: {r}");
    }
    // /var/tmp is the VM's own: what one VM writes there, the other does not see.
    let seen = s.exec(&closed, "echo mine > /var/tmp/only-closed && cat /var/tmp/x");
    assert_eq!(seen["stdout"], "from python", "{seen}");
    let other = s.exec(&egress, "test -e /var/tmp/only-closed; echo $?");
    assert_eq!(other["stdout"], "1\n", "{other}");

    // allowRead / allowWrite narrow the paths too, and cannot name anything outside them.
    let write_var_tmp = r#"try { Deno.writeTextFileSync("/var/tmp/y", "y"); result.set("written"); } catch (e) { result.set(e.name); }"#;
    let r = run(&s, &closed, "ts", json!({"code": write_var_tmp, "allowWrite": ["/workspace"]}));
    assert_eq!(r["result"], "NotCapable", "{r}");
    let r = run(&s, &closed, "ts", json!({"code": write_var_tmp, "allowWrite": ["/var/tmp"]}));
    assert_eq!(r["result"], "written", "{r}");
    let (st, r) =
        s.call("POST", &format!("/v1/vms/{closed}/run-ts"), Some(json!({"code": "1", "allowRead": ["/etc"]})));
    assert_eq!(st, 400, "{r}");
    assert!(r.to_string().contains("allowRead[0]"), "{r}");

    // No egress: no network for Deno, even when the request asks for it.
    let closed_run = run(&s, &closed, "ts", json!({"code": probe_ts(&[X]), "allowNet": true}));
    assert_ne!(closed_run["result"]["net"], "granted", "{closed_run}");
    let refused = closed_run["result"][X].as_str().unwrap_or_default();
    assert!(refused == "error:NotCapable" || refused == "error:PermissionDenied", "{closed_run}");

    // Egress to X only: granted without allowNet; the firewall, not Deno, stops Y.
    let open_run = run(&s, &egress, "ts", json!({"code": probe_ts(&[X, Y])}));
    assert_eq!(open_run["result"]["net"], "granted", "{open_run}");
    assert_eq!(open_run["result"][X], "open:X", "{open_run}");
    let y = open_run["result"][Y].as_str().unwrap_or_default();
    assert!(y == "timeout" || y == "error:ConnectionRefused", "Y must be stopped by the firewall: {open_run}");

    // A request can narrow the grant.
    let narrowed = run(&s, &egress, "ts", json!({"code": probe_ts(&[X]), "allowNet": false}));
    assert_ne!(narrowed["result"]["net"], "granted", "{narrowed}");
    let refused = narrowed["result"][X].as_str().unwrap_or_default();
    assert!(refused == "error:NotCapable" || refused == "error:PermissionDenied", "{narrowed}");
}
