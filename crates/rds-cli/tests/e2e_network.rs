//! End-to-end VM networking: the real `rds serve` runs inside a test-owned network namespace,
//! so its `table inet rds-<id>`, veths and per-VM resolvers live there and no packet leaves the
//! machine:
//!
//! ```text
//!   sandboxes (10.213.0.x) ── mgr ns: rds serve (BIND 0.0.0.0), nft ── up0 11.22.0.1
//!                                                                        │
//!   inet ns: X 11.22.33.10, Y 11.22.33.20, DNS 11.22.33.53, 169.254.169.254 ── up1 11.22.0.2
//! ```
//!
//! Probes run inside the VMs through the exec API (python3 with short timeouts). Namespaces and
//! helper servers are removed by a drop guard, even when an assertion fails.

mod common;

use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use common::Server;
use serde_json::{json, Value};

const X: &str = "11.22.33.10";
const Y: &str = "11.22.33.20";
const UPSTREAM_DNS: &str = "11.22.33.53";
const METADATA: &str = "169.254.169.254";
const UPLINK: &str = "11.22.0.1";
/// Port of the fake services on X, Y and the metadata address.
const WEB_PORT: u16 = 80;
/// UDP echo port on X and Y.
const ECHO_PORT: u16 = 9;
/// Ports of the second VM's own TCP and UDP servers.
const PEER_TCP: u16 = 8080;
const PEER_UDP: u16 = 9999;

/// Runs probes given as JSON (`[["tcp", host, port], ["udp", host, port], ["resolve", name],
/// ["dns", server, name]]`) and prints one result per probe as a JSON list.
const PROBE_PY: &str = r#"
import json, random, socket, struct, sys
T = 1.5
def tcp(host, port):
    try:
        s = socket.create_connection((host, int(port)), timeout=T)
        s.settimeout(T)
        data = s.recv(16)
        return "open:" + data.decode(errors="replace") if data else "closed"
    except Exception as e:
        return "blocked:" + type(e).__name__
def udp(host, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(T)
    try:
        s.sendto(b"ping", (host, int(port)))
        data, _ = s.recvfrom(64)
        return "open:" + data.decode(errors="replace")
    except Exception as e:
        return "blocked:" + type(e).__name__
def resolve(name):
    try:
        return "ok:" + socket.gethostbyname(name)
    except socket.gaierror as e:
        return "nxdomain" if e.args[0] == socket.EAI_NONAME else "error:%s" % e.args[0]
def dns(server, name):
    q = struct.pack(">HHHHHH", random.randint(0, 65535), 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0" + struct.pack(">HH", 1, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    try:
        s.sendto(q, (server, 53))
        s.recvfrom(512)
        return "answered"
    except Exception as e:
        return "blocked:" + type(e).__name__
ops = {"tcp": tcp, "udp": udp, "resolve": resolve, "dns": dns}
print(json.dumps([ops[p[0]](*p[1:]) for p in json.loads(sys.argv[1])]))
"#;

/// A TCP greeter and UDP echo inside a VM, for `argv[1]` seconds; touches /workspace/ready.
const PEER_SERVER_PY: &str = r#"
import select, socket, sys, time
t = socket.socket()
t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("0.0.0.0", 8080))
t.listen(8)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind(("0.0.0.0", 9999))
open("/workspace/ready", "w").close()
end = time.time() + float(sys.argv[1])
while time.time() < end:
    ready, _, _ = select.select([t, u], [], [], 0.2)
    for s in ready:
        if s is t:
            c, _ = t.accept()
            c.sendall(b"V")
            c.close()
        else:
            d, a = u.recvfrom(64)
            u.sendto(d, a)
"#;

fn skip_reason() -> Option<String> {
    if let Some(reason) = common::skip_reason() {
        return Some(reason);
    }
    for (tool, arg) in [("ip", "-V"), ("nft", "--version"), ("nsenter", "--version"), ("python3", "--version")] {
        let ok = Command::new(tool).arg(arg).stdout(Stdio::null()).stderr(Stdio::null()).status();
        if !ok.is_ok_and(|s| s.success()) {
            return Some(format!("`{tool}` is not installed"));
        }
    }
    None
}

/// Runs a command, panicking with its stderr on failure.
fn sh(program: &str, args: &[&str]) -> String {
    let output = Command::new(program).args(args).output().expect("spawn");
    assert!(
        output.status.success(),
        "{program} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Test-owned namespaces and helper threads; everything is removed on drop.
struct Topology {
    prefix: String,
    namespaces: Vec<String>,
    stop: Arc<AtomicBool>,
}

impl Topology {
    fn new() -> Topology {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        Topology {
            prefix: format!("rdse2e{}x{}", std::process::id(), nanos % 100_000),
            namespaces: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
        }
    }

    fn add_ns(&mut self, role: &str) -> String {
        let name = format!("{}-{role}", self.prefix);
        sh("ip", &["netns", "add", &name]);
        self.namespaces.push(name.clone());
        sh("ip", &["-n", &name, "link", "set", "lo", "up"]);
        name
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Moves the calling thread into network namespace `ns`.
fn enter(ns: &str) {
    let file = std::fs::File::open(format!("/run/netns/{ns}")).expect("open netns");
    // SAFETY: setns on an fd we own; it changes only this thread's network namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {ns}: {}", std::io::Error::last_os_error());
}

/// Runs `f` on a fresh thread inside `ns`, re-raising its panic here.
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = ns.to_string();
    let joined = std::thread::spawn(move || {
        enter(&ns);
        f()
    })
    .join();
    joined.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// A TCP greeter on `addr` in `ns` until `stop`.
fn tcp_server(ns: &str, addr: SocketAddr, reply: &'static str, stop: Arc<AtomicBool>) {
    let (ready_tx, ready_rx) = mpsc::channel();
    let ns = ns.to_string();
    std::thread::spawn(move || {
        enter(&ns);
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

/// A UDP echo on `addr` in `ns` until `stop`.
fn udp_echo(ns: &str, addr: SocketAddr, stop: Arc<AtomicBool>) {
    let (ready_tx, ready_rx) = mpsc::channel();
    let ns = ns.to_string();
    std::thread::spawn(move || {
        enter(&ns);
        let socket = UdpSocket::bind(addr).expect("bind udp echo");
        socket.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        ready_tx.send(()).unwrap();
        let mut buf = [0u8; 1500];
        while !stop.load(Ordering::SeqCst) {
            if let Ok((len, from)) = socket.recv_from(&mut buf) {
                let _ = socket.send_to(&buf[..len], from);
            }
        }
    });
    ready_rx.recv_timeout(Duration::from_secs(5)).expect("udp echo ready");
}

/// A minimal authoritative DNS server: fixed A records, NXDOMAIN for other names.
fn dns_server(ns: &str, addr: SocketAddr, records: Vec<(&'static str, Ipv4Addr)>, stop: Arc<AtomicBool>) {
    let (ready_tx, ready_rx) = mpsc::channel();
    let ns = ns.to_string();
    std::thread::spawn(move || {
        enter(&ns);
        let socket = UdpSocket::bind(addr).expect("bind dns server");
        socket.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        ready_tx.send(()).unwrap();
        let mut buf = [0u8; 1500];
        while !stop.load(Ordering::SeqCst) {
            let Ok((len, from)) = socket.recv_from(&mut buf) else { continue };
            if let Some(reply) = dns_reply(&buf[..len], &records) {
                let _ = socket.send_to(&reply, from);
            }
        }
    });
    ready_rx.recv_timeout(Duration::from_secs(5)).expect("dns server ready");
}

/// Answers one query: the question is copied, an A record added for a known name.
fn dns_reply(query: &[u8], records: &[(&str, Ipv4Addr)]) -> Option<Vec<u8>> {
    if query.len() < 12 || query[4..6] != [0, 1] {
        return None;
    }
    let mut labels = Vec::new();
    let mut at = 12;
    loop {
        let len = *query.get(at)? as usize;
        at += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(query.get(at..at + len)?).to_ascii_lowercase());
        at += len;
    }
    let qtype = u16::from_be_bytes([*query.get(at)?, *query.get(at + 1)?]);
    let question = query.get(12..at + 4)?;
    let name = labels.join(".");
    let known = records.iter().find(|(n, _)| *n == name);
    let answer = known.filter(|_| qtype == 1).map(|(_, ip)| ip.octets());
    let rcode = if known.is_some() { 0 } else { 3 };
    let mut reply = Vec::with_capacity(64);
    reply.extend_from_slice(&query[0..2]);
    reply.extend_from_slice(&[0x81, 0x80 | rcode, 0, 1, 0, u8::from(answer.is_some()), 0, 0, 0, 0]);
    reply.extend_from_slice(question);
    if let Some(ip) = answer {
        reply.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
        reply.extend_from_slice(&ip);
    }
    Some(reply)
}

/// Runs probes inside VM `id` and returns one result per probe.
fn probe(s: &Server, id: &str, probes: &[Vec<String>]) -> Vec<String> {
    let arg = serde_json::to_string(probes).unwrap();
    let body = json!({"cmd": format!("python3 - '{arg}'"), "stdin": PROBE_PY, "timeoutMs": 90_000});
    let (status, r) = s.call("POST", &format!("/v1/vms/{id}/exec"), Some(body));
    assert_eq!(status, 200, "probe exec: {r}");
    assert_eq!(r["exitCode"], 0, "probe failed: {r}");
    serde_json::from_str(r["stdout"].as_str().unwrap().trim()).unwrap_or_else(|e| panic!("probe output {r}: {e}"))
}

fn p(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Asserts each probe's outcome; `expect` entries are result prefixes (`open:X`, `blocked`, `nxdomain`).
fn assert_probes(s: &Server, id: &str, label: &str, cases: &[(Vec<String>, &str)]) {
    let probes: Vec<Vec<String>> = cases.iter().map(|(probe, _)| probe.clone()).collect();
    let results = probe(s, id, &probes);
    for ((probe, expect), got) in cases.iter().zip(&results) {
        assert!(got.starts_with(expect), "[{label}] {probe:?}: expected {expect}, got {got}");
    }
}

/// Destinations a VM must never reach, whatever its policy.
fn forbidden(gateway: &str, api_port: u16, other_vm: &str) -> Vec<(Vec<String>, &'static str)> {
    let port = api_port.to_string();
    vec![
        (p(&["tcp", gateway, &port]), "blocked"),
        (p(&["tcp", UPLINK, &port]), "blocked"),
        (p(&["tcp", METADATA, "80"]), "blocked"),
        (p(&["tcp", other_vm, &PEER_TCP.to_string()]), "blocked"),
        (p(&["udp", other_vm, &PEER_UDP.to_string()]), "blocked"),
    ]
}

fn patch_network(s: &Server, id: &str, body: Value) -> Value {
    let (status, vm) = s.call("PATCH", &format!("/v1/vms/{id}/network"), Some(body.clone()));
    assert_eq!(status, 200, "PATCH {body}: {vm}");
    vm
}

fn create(s: &Server, body: Value) -> (String, Value) {
    let (status, vm) = s.call("POST", "/v1/vms", Some(body));
    assert_eq!(status, 201, "create: {vm}\nmanager log:\n{}", s.log());
    (vm["id"].as_str().unwrap().to_string(), vm)
}

/// The slot index of a guest address in the default pool.
fn slot_index(guest_ip: &str) -> u32 {
    let ip: Ipv4Addr = guest_ip.parse().unwrap();
    (u32::from(ip) - u32::from(Ipv4Addr::new(10, 213, 0, 0))) / 4
}

fn gateway_of(guest_ip: &str) -> String {
    let ip: Ipv4Addr = guest_ip.parse().unwrap();
    Ipv4Addr::from(u32::from(ip) - 1).to_string()
}

/// Host interfaces, nft chains/sets and rule comments left for a VM of manager `s` in namespace `ns`.
fn leftovers(s: &Server, ns: &str, index: u32, vm_id: &str) -> Vec<String> {
    let mut found = Vec::new();
    let iface = format!("rds{}{index}", s.installation_id);
    for line in sh("ip", &["-n", ns, "-o", "link", "show"]).lines() {
        let name = line.split_whitespace().nth(1).unwrap_or("").trim_end_matches(':');
        if name.split('@').next() == Some(iface.as_str()) || line.contains(vm_id) {
            found.push(format!("link: {line}"));
        }
    }
    let ruleset = sh("ip", &["netns", "exec", ns, "nft", "list", "ruleset"]);
    for line in ruleset.lines() {
        if line.contains(&format!("vm-{index}-")) || line.contains(vm_id) {
            found.push(format!("nft: {}", line.trim()));
        }
    }
    found
}

/// Waits (bounded) for a file to exist in a VM.
fn wait_for_file(s: &Server, id: &str, path: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, r) = s.call("POST", &format!("/v1/vms/{id}/exec"), Some(json!({"cmd": format!("test -f {path}")})));
        if r["exitCode"] == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "{path} never appeared in VM {id}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn vm_egress_follows_policy_through_the_api_and_survives_a_manager_crash() {
    if let Some(reason) = skip_reason() {
        rds_testkit::skip(reason);
        return;
    }
    egress_follows_policy(Vec::new());
}

/// The same, with microVMs on the qemu runtime: a TAP per VM instead of a veth, and a guest that
/// addresses itself from its kernel command line.
#[test]
fn qemu_vm_egress_follows_policy_through_the_api_and_survives_a_manager_crash() {
    let image = match skip_reason().map_or_else(common::qemu_image_dir, Err) {
        Ok(image) => image,
        Err(reason) => {
            rds_testkit::skip(reason);
            return;
        }
    };
    egress_follows_policy(vec![
        ("RDS_RUNTIME".into(), "qemu".into()),
        ("RDS_IMAGE_DIR".into(), image.to_string_lossy().into_owned()),
    ]);
}

/// Builds the fake internet, then runs [`scenario`] against a manager started with `env`.
fn egress_follows_policy(env: Vec<(String, String)>) {
    let (topo, mgr) = internet();
    let mgr_ns = mgr.clone();
    in_ns(&mgr, move || scenario(&mgr_ns, &env));
    drop(topo);
}

/// A manager namespace whose uplink leads to an "internet" namespace serving X, Y, the metadata
/// address and a DNS server (allowed.test → X, blocked.test → Y) until the topology drops.
fn internet() -> (Topology, String) {
    let mut topo = Topology::new();
    let mgr = topo.add_ns("mgr");
    let inet = topo.add_ns("inet");
    sh("ip", &["-n", &mgr, "link", "add", "up0", "type", "veth", "peer", "name", "up1", "netns", &inet]);
    sh("ip", &["-n", &mgr, "addr", "add", "11.22.0.1/24", "dev", "up0"]);
    sh("ip", &["-n", &mgr, "link", "set", "up0", "up"]);
    sh("ip", &["-n", &mgr, "route", "add", "default", "via", "11.22.0.2"]);
    sh("ip", &["-n", &inet, "addr", "add", "11.22.0.2/24", "dev", "up1"]);
    sh("ip", &["-n", &inet, "link", "set", "up1", "up"]);
    for addr in [X, Y, UPSTREAM_DNS, METADATA] {
        sh("ip", &["-n", &inet, "addr", "add", &format!("{addr}/32"), "dev", "lo"]);
    }
    let at = |ip: &str, port: u16| SocketAddr::new(ip.parse().unwrap(), port);
    let stop = topo.stop.clone();
    tcp_server(&inet, at(X, WEB_PORT), "X", stop.clone());
    tcp_server(&inet, at(Y, WEB_PORT), "Y", stop.clone());
    tcp_server(&inet, at(METADATA, WEB_PORT), "M", stop.clone());
    udp_echo(&inet, at(X, ECHO_PORT), stop.clone());
    udp_echo(&inet, at(Y, ECHO_PORT), stop.clone());
    let records = vec![("allowed.test", X.parse().unwrap()), ("blocked.test", Y.parse().unwrap())];
    dns_server(&inet, at(UPSTREAM_DNS, 53), records, stop.clone());
    (topo, mgr)
}

/// Issue G: the warm pool serves a create with `allowIps` too, and the pooled VM enforces the
/// policy it was created with (its member booted with none).
#[test]
fn a_pooled_vm_enforces_the_egress_policy_of_its_create() {
    if let Some(reason) = skip_reason() {
        rds_testkit::skip(reason);
        return;
    }
    let (topo, mgr) = internet();
    let mgr_ns = mgr.clone();
    in_ns(&mgr, move || {
        let env = [
            ("RDS_NETWORK", "on"),
            ("RDS_DNS_UPSTREAMS", UPSTREAM_DNS),
            ("RATE_LIMIT_PER_MIN", "0"),
            ("ENABLE_WARM_POOL", "true"),
            ("WARM_POOL_TARGET", "1"),
        ];
        let s = Server::start_in_netns(&mgr_ns, "0.0.0.0", &env);
        common::wait_for_pool(&s, 1);
        let (id, vm) = create(&s, json!({"cpu": 1, "memMb": 256, "outboundInternet": true, "allowIps": [X]}));
        assert_eq!(vm["provisionMode"], "pool", "{vm}");
        assert_eq!(vm["network"]["allowIps"], json!(["11.22.33.10/32"]), "{vm}");
        let port = WEB_PORT.to_string();
        assert_probes(&s, &id, "pooled vm", &[(p(&["tcp", X, &port]), "open:X"), (p(&["tcp", Y, &port]), "blocked")]);
    });
    drop(topo);
}

/// Everything that talks to the manager, on a thread inside the manager's namespace.
fn scenario(mgr: &str, env: &[(String, String)]) {
    let mut all = vec![("RDS_NETWORK", "on"), ("RDS_DNS_UPSTREAMS", UPSTREAM_DNS), ("RATE_LIMIT_PER_MIN", "0")];
    all.extend(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let mut s = Server::start_in_netns(mgr, "0.0.0.0", &all);
    let (x_port, y_port) = (WEB_PORT.to_string(), WEB_PORT.to_string());
    let (x_echo, y_echo) = (ECHO_PORT.to_string(), ECHO_PORT.to_string());

    // Two VMs: vm1 without egress, vm2 allowed to reach X from creation.
    let (vm1, v1) = create(&s, json!({"cpu": 1, "memMb": 256}));
    let (vm2, v2) = create(&s, json!({"cpu": 1, "memMb": 256, "outboundInternet": true, "allowIps": [X]}));
    let runtime = env.iter().find(|(k, _)| k == "RDS_RUNTIME").map_or("sandbox", |(_, v)| v.as_str());
    assert_eq!((v1["runtime"].as_str(), v2["runtime"].as_str()), (Some(runtime), Some(runtime)), "{v1}");
    let ip1 = v1["network"]["guestIp"].as_str().expect("vm1 has an address").to_string();
    let ip2 = v2["network"]["guestIp"].as_str().expect("vm2 has an address").to_string();
    assert_ne!(ip1, ip2);
    assert_eq!(v1["network"]["outboundInternet"], false);
    assert_eq!(v2["network"]["allowIps"], json!(["11.22.33.10/32"]), "{v2}");
    let gw1 = gateway_of(&ip1);
    let resolv = s.exec(&vm1, "cat /etc/resolv.conf")["stdout"].as_str().unwrap().to_string();
    assert!(resolv.contains(&format!("nameserver {gw1}")), "vm1 resolv.conf: {resolv}");

    // vm2 serves TCP and UDP for the "other VM" probes, for a bounded time.
    let server = {
        let (url, key, vm2) = (s.url.clone(), s.key.clone(), vm2.clone());
        std::thread::spawn(move || {
            let body = json!({"cmd": "python3 - 115", "stdin": PEER_SERVER_PY, "timeoutMs": 120_000});
            let _ = ureq::post(&format!("{url}/v1/vms/{vm2}/exec")).set("X-API-Key", &key).send_json(body);
        })
    };
    wait_for_file(&s, &vm2, "/workspace/ready");
    assert_probes(
        &s,
        &vm2,
        "vm2 own server",
        &[(p(&["tcp", &ip2, "8080"]), "open:V"), (p(&["udp", &ip2, "9999"]), "open:ping")],
    );
    // Creation-time policy: vm2 reaches X, not Y.
    assert_probes(
        &s,
        &vm2,
        "vm2 create policy",
        &[(p(&["tcp", X, &x_port]), "open:X"), (p(&["tcp", Y, &y_port]), "blocked")],
    );

    // 1. No egress: nothing at all.
    let mut cases = vec![
        (p(&["tcp", X, &x_port]), "blocked"),
        (p(&["udp", X, &x_echo]), "blocked"),
        (p(&["dns", &gw1, "allowed.test"]), "blocked"),
    ];
    cases.extend(forbidden(&gw1, s.port, &ip2));
    assert_probes(&s, &vm1, "no egress", &cases);

    // 2. allowIps [X/32]: X yes (tcp and udp), Y no, the forbidden stay forbidden.
    let v = patch_network(&s, &vm1, json!({"outboundInternet": true, "allowIps": ["11.22.33.10/32"]}));
    assert_eq!(
        v["network"],
        json!({"guestIp": ip1, "outboundInternet": true, "allowIps": ["11.22.33.10/32"], "allowDomains": []})
    );
    let mut cases = vec![
        (p(&["tcp", X, &x_port]), "open:X"),
        (p(&["udp", X, &x_echo]), "open:ping"),
        (p(&["tcp", Y, &y_port]), "blocked"),
        (p(&["udp", Y, &y_echo]), "blocked"),
    ];
    cases.extend(forbidden(&gw1, s.port, &ip2));
    assert_probes(&s, &vm1, "allow X", &cases);

    // 3. PATCH flips both directions live.
    patch_network(&s, &vm1, json!({"allowIps": [format!("{Y}/32")]}));
    assert_probes(&s, &vm1, "flip", &[(p(&["tcp", X, &x_port]), "blocked"), (p(&["tcp", Y, &y_port]), "open:Y")]);

    // 4. Domain rules through the VM's own resolver (its /etc/resolv.conf).
    let v = patch_network(&s, &vm1, json!({"allowIps": [], "allowDomains": ["allowed.test"]}));
    assert_eq!(v["network"]["allowDomains"], json!(["allowed.test"]));
    let domain_cases = |s: &Server, label: &str| {
        let mut cases = vec![
            (p(&["resolve", "allowed.test"]), "ok:11.22.33.10"),
            (p(&["tcp", X, &x_port]), "open:X"),
            (p(&["resolve", "other.test"]), "nxdomain"),
            (p(&["resolve", "blocked.test"]), "nxdomain"),
            (p(&["tcp", Y, &y_port]), "blocked"),
            (p(&["dns", UPSTREAM_DNS, "allowed.test"]), "blocked"),
        ];
        cases.extend(forbidden(&gw1, s.port, &ip2));
        assert_probes(s, &vm1, label, &cases);
    };
    domain_cases(&s, "domains");

    // 5. Bad entries are refused with their position, and nothing changes.
    let (status, err) = s.call(
        "PATCH",
        &format!("/v1/vms/{vm1}/network"),
        Some(json!({"allowIps": ["1.1.1.1", "::/0", "10.0.0.300"]})),
    );
    assert_eq!(status, 400, "{err}");
    assert!(err["error"]["message"].as_str().unwrap().contains("allowIps[2]"), "{err}");
    let (status, err) = s.call(
        "POST",
        "/v1/vms",
        Some(json!({"cpu": 1, "memMb": 256, "outboundInternet": true, "allowDomains": ["*"]})),
    );
    assert_eq!(status, 400, "{err}");
    assert!(err["error"]["message"].as_str().unwrap().contains("allowDomains[0]"), "{err}");

    // 6. Delete vm2: no link, chain, set or rule of it remains.
    let index2 = slot_index(&ip2);
    let (status, _) = s.call("DELETE", &format!("/v1/vms/{vm2}"), None);
    assert_eq!(status, 204);
    let _ = server.join();
    assert_eq!(leftovers(&s, mgr, index2, &vm2), Vec::<String>::new(), "after delete");

    // 7. kill -9 the manager; plant an orphaned interface of its own, and one of the old unscoped
    // naming that belongs to nobody this manager knows; restart.
    s.kill9();
    let ghost = format!("rds{}77", s.installation_id);
    // Nothing may panic while the manager is down (its drop could not delete the VMs).
    let planted = [
        &["-n", mgr, "link", "add", &ghost, "type", "veth", "peer", "name", "ghost77"][..],
        &["-n", mgr, "link", "set", &ghost, "alias", "rds-vm:ghost-vm"][..],
        &["-n", mgr, "link", "add", "rdsv78", "type", "veth", "peer", "name", "rdsv78p"][..],
        &["-n", mgr, "link", "set", "rdsv78", "alias", "rds-vm:not-ours"][..],
    ]
    .iter()
    .all(|args| Command::new("ip").args(*args).status().is_ok_and(|st| st.success()));
    s.restart();
    assert!(planted, "could not plant the orphaned interfaces");
    assert_eq!(leftovers(&s, mgr, 77, "ghost-vm"), Vec::<String>::new(), "orphan after restart");
    assert_eq!(leftovers(&s, mgr, index2, &vm2), Vec::<String>::new(), "deleted VM after restart");
    let links = sh("ip", &["-n", mgr, "-o", "link", "show"]);
    assert!(links.contains("rdsv78"), "an interface of another naming was removed:\n{links}");
    let (status, v) = s.call("GET", &format!("/v1/vms/{vm1}"), None);
    assert_eq!((status, v["state"].as_str()), (200, Some("RUNNING")), "{v}");
    assert_eq!(v["network"]["allowDomains"], json!(["allowed.test"]));
    // The surviving VM's policy still holds, its resolver included.
    domain_cases(&s, "after restart");

    // 8. Delete the last VM: nothing of it is left either.
    let index1 = slot_index(&ip1);
    let (status, _) = s.call("DELETE", &format!("/v1/vms/{vm1}"), None);
    assert_eq!(status, 204);
    assert_eq!(leftovers(&s, mgr, index1, &vm1), Vec::<String>::new(), "after deleting vm1");
    let links = sh("ip", &["-n", mgr, "-o", "link", "show"]);
    assert!(!links.contains(&format!("rds{}", s.installation_id)), "VM interfaces left:\n{links}");
}

#[test]
fn egress_requests_answer_501_without_networking_and_bad_entries_400() {
    require_sandbox!();
    // The harness runs managers with RDS_NETWORK=off.
    let s = Server::start(&[]);
    let (status, err) = s.call("POST", "/v1/vms", Some(json!({"cpu": 1, "memMb": 256, "outboundInternet": true})));
    assert_eq!(status, 501, "{err}");
    assert!(err["error"]["message"].as_str().unwrap().contains("RDS_NETWORK=off"), "{err}");
    let (status, err) =
        s.call("POST", "/v1/vms", Some(json!({"cpu": 1, "memMb": 256, "allowIps": ["10.0.0.1", "nope"]})));
    assert_eq!(status, 400, "{err}");
    assert!(err["error"]["message"].as_str().unwrap().contains("allowIps[1]"), "{err}");

    let id = s.create_vm(256);
    let (_, vm) = s.call("GET", &format!("/v1/vms/{id}"), None);
    assert_eq!(vm["network"], json!({"guestIp": null, "outboundInternet": false, "allowIps": [], "allowDomains": []}));
    let (status, err) = s.call("PATCH", &format!("/v1/vms/{id}/network"), Some(json!({"outboundInternet": true})));
    assert_eq!(status, 501, "{err}");
    // A policy without egress is only recorded, so it is accepted.
    let (status, vm) = s.call("PATCH", &format!("/v1/vms/{id}/network"), Some(json!({"allowIps": ["1.2.3.4"]})));
    assert_eq!(status, 200, "{vm}");
    assert_eq!(vm["network"]["allowIps"], json!(["1.2.3.4/32"]));
    let (status, _) = s.call("PATCH", "/v1/vms/nope/network", Some(json!({})));
    assert_eq!(status, 404);
}
