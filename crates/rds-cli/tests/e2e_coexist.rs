//! Two `rds serve` with different STORAGE_ROOTs on one host: both with the default cgroup parent
//! (no `RDS_CGROUP_GROUP`), networking on with the same default `RDS_VM_CIDR`, and running VMs.
//! Each manager is killed with SIGKILL and restarted while the other keeps running; after every
//! step every VM of both must still run and answer, keep its cgroups, its interface and its nft
//! rules in its own manager's table, and the two managers' VMs must hold different addresses.
//!
//! Both managers share one test-owned network namespace (so their tables, interfaces and
//! addresses meet there, not in the host's) and the host's cgroup hierarchy and address claims
//! (`/run/rds/slots`), exactly as two managers on one host do.

mod common;

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use common::{sh_in, NetNs, Server};
use serde_json::{json, Value};

/// Fails loudly when this host cannot run the test.
fn require_prerequisites() {
    if let Some(reason) = common::skip_reason() {
        panic!("e2e_coexist cannot run here: {reason}");
    }
    for (tool, arg) in [("ip", "-V"), ("nft", "--version"), ("nsenter", "--version")] {
        let ok = Command::new(tool).arg(arg).stdout(Stdio::null()).stderr(Stdio::null()).status();
        assert!(ok.is_ok_and(|s| s.success()), "e2e_coexist cannot run here: `{tool}` is not installed");
    }
}

/// A VM as the test created it.
struct Vm {
    id: String,
    guest_ip: Ipv4Addr,
    /// The one address its egress policy allows (so its allow set has a known member).
    allowed: String,
}

impl Vm {
    /// Slot index in the default pool 10.213.0.0/16.
    fn index(&self) -> u32 {
        (u32::from(self.guest_ip) - u32::from(Ipv4Addr::new(10, 213, 0, 0))) / 4
    }

    /// The /30's network address: the name of its host-wide claim.
    fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.guest_ip) - 2)
    }
}

fn create(s: &Server, n: u8) -> Vm {
    let allowed = format!("203.0.113.{n}");
    let body = json!({"cpu": 1, "memMb": 128, "outboundInternet": true, "allowIps": [allowed]});
    let (status, vm) = s.call("POST", "/v1/vms", Some(body));
    assert_eq!(status, 201, "create: {vm}\nmanager log:\n{}", s.log());
    let guest_ip = vm["network"]["guestIp"].as_str().unwrap_or_else(|| panic!("no guestIp: {vm}")).parse().unwrap();
    Vm { id: vm["id"].as_str().unwrap().to_string(), guest_ip, allowed }
}

/// The cgroup directories of a VM in sandbox group `group` (the manager inherits this test's
/// cgroups; on v1 one directory per limited controller, on v2 one).
fn vm_cgroup_dirs(group: &str, vm_id: &str) -> Vec<PathBuf> {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let root = PathBuf::from("/sys/fs/cgroup");
    let v2 = std::fs::read_to_string(root.join("cgroup.controllers")).is_ok_and(|c| !c.trim().is_empty());
    let mut dirs = Vec::new();
    for line in own.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next(), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let mount = if v2 && controllers.is_empty() {
            root.clone()
        } else if let Some(ctrl) =
            ["memory", "cpu", "pids"].into_iter().find(|c| controllers.split(',').any(|x| x == *c))
        {
            if v2 {
                continue;
            }
            root.join(ctrl)
        } else {
            continue;
        };
        let mut base = mount.join(path.trim_start_matches('/'));
        if base.file_name().is_some_and(|n| n == "rds-manager") {
            base.pop();
        }
        dirs.push(base.join(group).join(vm_id));
    }
    assert!(!dirs.is_empty(), "no cgroup hierarchy found in /proc/self/cgroup:\n{own}");
    dirs
}

/// A claim the test forged in `/run/rds/slots`; removed on drop, even after a failed assert.
struct ClaimGuard(PathBuf);

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Everything of `s`'s VMs is in place and working; `label` names the step.
fn assert_intact(ns: &str, s: &Server, vms: &[Vm], label: &str) {
    let table = format!("rds-{}", s.installation_id);
    let listing: Value = serde_json::from_str(&sh_in(ns, "nft", &["-j", "list", "table", "inet", &table])).unwrap();
    let items = listing["nftables"].as_array().unwrap();
    let links: Value = serde_json::from_str(&sh_in(ns, "ip", &["-j", "link", "show"])).unwrap();
    for vm in vms {
        let (status, view) = s.call("GET", &format!("/v1/vms/{}", vm.id), None);
        assert_eq!((status, view["state"].as_str()), (200, Some("RUNNING")), "[{label}] {view}\nlog:\n{}", s.log());
        assert_eq!(view["network"]["guestIp"], vm.guest_ip.to_string(), "[{label}] address changed");
        let out = s.exec(&vm.id, "echo ok");
        assert_eq!((out["exitCode"].as_i64(), out["stdout"].as_str()), (Some(0), Some("ok\n")), "[{label}] {out}");

        let index = vm.index();
        let chain = format!("vm-{index}-fwd");
        let commented = items
            .iter()
            .any(|i| i["rule"]["chain"] == chain.as_str() && i["rule"]["comment"] == format!("vm={}", vm.id).as_str());
        assert!(commented, "[{label}] VM {} has no chain {chain} in table {table}", vm.id);
        let allow = items
            .iter()
            .find(|i| i["set"]["name"] == format!("vm-{index}-allow4").as_str())
            .unwrap_or_else(|| panic!("[{label}] VM {} has no allow set in {table}", vm.id));
        assert!(allow.to_string().contains(&vm.allowed), "[{label}] policy of {} lost: {allow}", vm.id);

        let iface = format!("rds{}{index}", s.installation_id);
        let link = links.as_array().unwrap().iter().find(|l| l["ifname"] == iface.as_str());
        let alias = link.and_then(|l| l["ifalias"].as_str());
        assert_eq!(alias, Some(format!("rds-vm:{}", vm.id).as_str()), "[{label}] interface {iface}: {link:?}");

        // PID 1 and the agent live in the VM group's `agent` child.
        for dir in vm_cgroup_dirs(&s.cgroup_group(), &vm.id).iter().map(|d| d.join("agent")) {
            let procs = std::fs::read_to_string(dir.join("cgroup.procs"))
                .unwrap_or_else(|e| panic!("[{label}] cgroup {} of VM {}: {e}", dir.display(), vm.id));
            assert!(!procs.trim().is_empty(), "[{label}] cgroup {} of VM {} is empty", dir.display(), vm.id);
        }

        let claim = std::fs::read_link(format!("/run/rds/slots/{}", vm.network()))
            .unwrap_or_else(|e| panic!("[{label}] claim of {}: {e}", vm.network()));
        assert_eq!(
            claim.to_str(),
            Some(s.installation_id.as_str()),
            "[{label}] {} is claimed by someone else",
            vm.guest_ip
        );
    }
}

#[test]
fn two_managers_on_one_host_survive_each_others_restarts() {
    require_prerequisites();
    let ns = NetNs::new("rdscx");
    let name = ns.0.clone();
    ns.run(move || scenario(&name));
    drop(ns);
}

/// Everything that talks to the managers, on a thread inside namespace `ns`.
fn scenario(ns: &str) {
    let env = [("RDS_NETWORK", "on"), ("RDS_DNS_UPSTREAMS", "127.0.0.1"), ("RATE_LIMIT_PER_MIN", "0")];
    let mut a = Server::start_in_netns(ns, "127.0.0.1", &env);
    let mut b = Server::start_in_netns(ns, "127.0.0.1", &env);
    assert_ne!(a.installation_id, b.installation_id, "two stores, one installation id");
    assert_ne!(a.cgroup_group(), b.cgroup_group());

    // Interleaved, so each manager's next free slot is one the other has just claimed.
    let mut a_vms = vec![create(&a, 1)];
    let mut b_vms = vec![create(&b, 2)];
    a_vms.push(create(&a, 3));
    b_vms.push(create(&b, 4));
    let addresses: HashSet<Ipv4Addr> = a_vms.iter().chain(&b_vms).map(|vm| vm.guest_ip).collect();
    assert_eq!(addresses.len(), 4, "two managers handed out the same address: {addresses:?}");
    assert_intact(ns, &a, &a_vms, "both started");
    assert_intact(ns, &b, &b_vms, "both started");

    // An interface of the pre-id naming that neither manager owns.
    sh_in(ns, "ip", &["link", "add", "rdsv5", "type", "veth", "peer", "name", "rdsv5p"]);
    sh_in(ns, "ip", &["link", "set", "rdsv5", "alias", &format!("rds-vm:{}", a_vms[0].id)]);

    a.kill9();
    assert_intact(ns, &b, &b_vms, "a down");
    a.restart();
    assert_intact(ns, &a, &a_vms, "a restarted");
    assert_intact(ns, &b, &b_vms, "a restarted");

    b.kill9();
    assert_intact(ns, &a, &a_vms, "b down");
    b.restart();
    assert_intact(ns, &a, &a_vms, "b restarted");
    assert_intact(ns, &b, &b_vms, "b restarted");

    // A reboot empties /run/rds/slots, and whichever manager starts first may claim a stopped
    // VM's recorded slot. Forge that while a is down: a's stopped VM's /30 now claimed by b, plus
    // a stale claim of a's own that no VM holds. At restart a drops only its own stale claim; at
    // start the stopped VM gets a new, unclaimed slot.
    let moved = a_vms.remove(1);
    let (status, body) = a.call("POST", &format!("/v1/vms/{}/stop", moved.id), None);
    assert_eq!(status, 204, "stop: {body}");
    a.kill9();
    let forged = ClaimGuard(PathBuf::from(format!("/run/rds/slots/{}", moved.network())));
    let stale = ClaimGuard(PathBuf::from("/run/rds/slots/10.213.200.0"));
    std::fs::remove_file(&forged.0).expect("a's claim of its stopped VM");
    std::os::unix::fs::symlink(&b.installation_id, &forged.0).unwrap();
    std::os::unix::fs::symlink(&a.installation_id, &stale.0).unwrap();
    a.restart();
    assert!(std::fs::symlink_metadata(&stale.0).is_err(), "a kept a claim no VM of it holds");
    let holder = std::fs::read_link(&forged.0).expect("b's claim was removed by a");
    assert_eq!(holder.to_str(), Some(b.installation_id.as_str()));
    let (status, body) = a.call("POST", &format!("/v1/vms/{}/start", moved.id), None);
    assert_eq!(status, 204, "start: {body}\nlog:\n{}", a.log());
    let (_, view) = a.call("GET", &format!("/v1/vms/{}", moved.id), None);
    let guest_ip: Ipv4Addr = view["network"]["guestIp"].as_str().unwrap().parse().unwrap();
    assert_ne!(guest_ip, moved.guest_ip, "the VM kept addresses another manager claimed");
    a_vms.push(Vm { guest_ip, ..moved });
    assert_intact(ns, &a, &a_vms, "readdressed after a forged reboot");
    assert_intact(ns, &b, &b_vms, "readdressed after a forged reboot");
    drop(forged);

    // After both restarts, new VMs still never take the other's addresses.
    b_vms.push(create(&b, 5));
    a_vms.push(create(&a, 6));
    let addresses: HashSet<Ipv4Addr> = a_vms.iter().chain(&b_vms).map(|vm| vm.guest_ip).collect();
    assert_eq!(addresses.len(), 6, "two managers handed out the same address: {addresses:?}");
    assert_intact(ns, &a, &a_vms, "after more creates");
    assert_intact(ns, &b, &b_vms, "after more creates");
    assert!(
        sh_in(ns, "ip", &["-o", "link", "show"]).contains("rdsv5"),
        "an interface neither manager owns was removed"
    );

    // Deleting a's VMs releases its claims and rules and leaves b's alone.
    for vm in &a_vms {
        let (status, body) = a.call("DELETE", &format!("/v1/vms/{}", vm.id), None);
        assert_eq!(status, 204, "{body}");
        let claim = std::fs::read_link(format!("/run/rds/slots/{}", vm.network())).ok();
        assert_ne!(
            claim.as_deref().and_then(|c| c.to_str()),
            Some(a.installation_id.as_str()),
            "claim kept after delete"
        );
    }
    let a_table = sh_in(ns, "nft", &["list", "table", "inet", &format!("rds-{}", a.installation_id)]);
    assert!(!a_table.contains("vm="), "rules left after delete:\n{a_table}");
    assert_intact(ns, &b, &b_vms, "a's VMs deleted");
}

/// Runs `rds serve` on `root` (a fresh port, networking off) and returns its exit status and
/// stderr; it must exit by itself.
fn serve_exits(root: &std::path::Path, extra: &[(&str, &str)]) -> (std::process::ExitStatus, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rds"));
    cmd.arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("PORT", port.to_string())
        .env("STORAGE_ROOT", root)
        .env("RDS_AGENT_BIN", common::agent_bin())
        .env("RDS_NETWORK", "off")
        .env("API_KEY", common::KEY)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("spawn rds serve");
    let pid = child.id();
    // A manager that wrongly starts would serve forever: bound the wait.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(std::time::Duration::from_secs(30)) {
        Ok(output) => {
            let output = output.expect("wait for rds serve");
            (output.status, String::from_utf8_lossy(&output.stderr).into_owned())
        }
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("a second manager on {} started and kept serving", root.display());
        }
    }
}

#[test]
fn a_second_manager_on_the_same_storage_root_or_cgroup_group_refuses_to_start() {
    require_prerequisites();
    let s = Server::start(&[]);
    let id = s.create_vm(128);

    let (status, stderr) = serve_exits(s.root.path(), &[]);
    assert!(!status.success(), "second manager on one STORAGE_ROOT: {status}\n{stderr}");
    assert!(stderr.contains(&format!("installation id {}", s.installation_id)), "{stderr}");

    let other = tempfile::Builder::new().prefix("rds-e2e-").tempdir().unwrap();
    let (status, stderr) = serve_exits(other.path(), &[("RDS_CGROUP_GROUP", &s.cgroup_group())]);
    assert!(!status.success(), "second manager with the same RDS_CGROUP_GROUP: {status}\n{stderr}");
    assert!(stderr.contains(&format!("cgroup group {}", s.cgroup_group())), "{stderr}");

    // The first manager and its VM never noticed.
    assert_eq!(s.exec(&id, "echo ok")["stdout"], "ok\n");
    let (_, vm) = s.call("GET", &format!("/v1/vms/{id}"), None);
    assert_eq!(vm["state"], "RUNNING", "{vm}");
}
