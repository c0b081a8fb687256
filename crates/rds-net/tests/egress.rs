//! End-to-end egress enforcement in a topology of test-owned network namespaces:
//!
//! ```text
//!   vm1 (eth0 10.213.0.2) ─┐                          ┌─ internet ns: X 11.22.33.10, Y 11.22.33.20,
//!                          ├─ host ns (Network, nft) ─┤   DNS 11.22.33.53, metadata 169.254.169.254
//!   vm2 (eth0 10.213.0.6) ─┘   up0 11.22.0.1          └─ up1 11.22.0.2
//! ```
//!
//! The host ns runs `Network` on a thread that `setns`-ed into it; the root namespace is never
//! modified (checked at the end).

mod support;

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use rds_net::{bench_apply, AddressPool, EgressPolicy, InstallationId, Network, NetworkConfig, Slot};
use support::*;

const X: Ipv4Addr = Ipv4Addr::new(11, 22, 33, 10);
const Y: Ipv4Addr = Ipv4Addr::new(11, 22, 33, 20);
const UPSTREAM_DNS: Ipv4Addr = Ipv4Addr::new(11, 22, 33, 53);
const METADATA: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
const HOST_UPLINK: Ipv4Addr = Ipv4Addr::new(11, 22, 0, 1);
const MANAGER_PORT: u16 = 7000;

fn at(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::from((ip, port))
}

fn policy(outbound: bool, ips: &[&str], domains: &[&str]) -> EgressPolicy {
    let ips: Vec<String> = ips.iter().map(|s| s.to_string()).collect();
    let domains: Vec<String> = domains.iter().map(|s| s.to_string()).collect();
    EgressPolicy::from_request(Some(outbound), &ips, &domains).unwrap()
}

/// Applies `policy` to VM `vm_id` on the host thread.
fn apply(host: &HostSide, vm_id: &'static str, slot: Slot, policy: EgressPolicy) {
    host.run(move |net| async move { net.apply_policy(vm_id, &slot, &policy).await })
        .unwrap_or_else(|err| panic!("apply_policy({vm_id}): {err}"));
}

/// Everything VM1 must never reach, whatever its policy says.
fn assert_forbidden_stays_closed(vm1: &str, slot1: Slot, slot2: Slot, label: &str) {
    let cases: Vec<(&str, SocketAddr, bool)> = vec![
        ("manager port on vm1's gateway (tcp)", at(slot1.host_ip, MANAGER_PORT), true),
        ("manager port on vm1's gateway (udp)", at(slot1.host_ip, MANAGER_PORT + 1), false),
        ("manager port on the host uplink (tcp)", at(HOST_UPLINK, MANAGER_PORT), true),
        ("manager port on the host uplink (udp)", at(HOST_UPLINK, MANAGER_PORT + 1), false),
        // From inside the VM, 127.0.0.1 is the VM's own loopback: the host's is unroutable.
        ("manager port on 127.0.0.1 (tcp)", at(Ipv4Addr::LOCALHOST, MANAGER_PORT), true),
        ("manager port on vm2's gateway (tcp)", at(slot2.host_ip, MANAGER_PORT), true),
        ("metadata 169.254.169.254 (tcp)", at(METADATA, 80), true),
        ("vm2 (tcp)", at(slot2.guest_ip, 80), true),
        ("vm2 (udp)", at(slot2.guest_ip, 9), false),
    ];
    let vm1 = vm1.to_string();
    let label = label.to_string();
    in_ns(&vm1, move || {
        for (what, addr, tcp) in cases {
            let reached = if tcp { tcp_reaches(addr) } else { udp_reaches(addr, "forbidden") };
            assert!(!reached, "[{label}] vm1 reached {what} at {addr}");
        }
    });
}

#[test]
fn vm_egress_follows_policy_in_a_namespace_topology() {
    if let Some(reason) = skip_reason() {
        rds_testkit::skip(reason);
        return;
    }
    let root_forwarding = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();

    let mut topo = Topology::new();
    let host = topo.add_ns("host");
    let inet = topo.add_ns("inet");
    let vm1 = topo.add_ns("vm1");
    let vm2 = topo.add_ns("vm2");

    // Uplink host <-> "internet", created directly inside the namespaces.
    sh("ip", &["-n", &host, "link", "add", "up0", "type", "veth", "peer", "name", "up1", "netns", &inet]);
    sh("ip", &["-n", &host, "addr", "add", "11.22.0.1/24", "dev", "up0"]);
    sh("ip", &["-n", &host, "link", "set", "up0", "up"]);
    sh("ip", &["-n", &host, "route", "add", "default", "via", "11.22.0.2"]);
    sh("ip", &["-n", &inet, "addr", "add", "11.22.0.2/24", "dev", "up1"]);
    sh("ip", &["-n", &inet, "link", "set", "up1", "up"]);
    for addr in ["11.22.33.10/32", "11.22.33.20/32", "11.22.33.53/32", "169.254.169.254/32"] {
        sh("ip", &["-n", &inet, "addr", "add", addr, "dev", "lo"]);
    }
    // No reverse-path filtering in the host ns: nft alone must stop forged sources.
    sh(
        "ip",
        &[
            "netns",
            "exec",
            &host,
            "sysctl",
            "-qw",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
        ],
    );

    let stop = topo.stop.clone();
    tcp_server(&inet, at(X, 80), "X", stop.clone());
    tcp_server(&inet, at(Y, 80), "Y", stop.clone());
    tcp_server(&inet, at(METADATA, 80), "M", stop.clone());
    let x_log = udp_echo(&inet, at(X, 9), stop.clone());
    udp_echo(&inet, at(Y, 9), stop.clone());
    dns_server(&inet, at(UPSTREAM_DNS, 53), vec![("allowed.test", X), ("blocked.test", Y)], stop.clone());
    tcp_server(&host, at(Ipv4Addr::UNSPECIFIED, MANAGER_PORT), "H", stop.clone());
    udp_echo(&host, at(Ipv4Addr::UNSPECIFIED, MANAGER_PORT + 1), stop.clone());
    tcp_server(&vm2, at(Ipv4Addr::UNSPECIFIED, 80), "V", stop.clone());
    udp_echo(&vm2, at(Ipv4Addr::UNSPECIFIED, 9), stop.clone());

    let pool = AddressPool::default();
    let slot1 = pool.slot(0).unwrap();
    let slot2 = pool.slot(1).unwrap();
    let pid1 = topo.sleeper(&vm1);
    let pid2 = topo.sleeper(&vm2);
    let hostside = HostSide::start(&host, pool, vec![at(UPSTREAM_DNS, 53)]);
    hostside
        .run(move |net| async move {
            net.attach_veth("vm-one", &slot1, pid1).await?;
            net.attach_veth("vm-two", &slot2, pid2).await?;
            net.apply_policy("vm-one", &slot1, &EgressPolicy::deny_all()).await?;
            net.apply_policy("vm-two", &slot2, &EgressPolicy::deny_all()).await
        })
        .expect("attach both VMs");

    // The sandbox side was configured: eth0 with the derived MAC and the guest address.
    let eth0 = sh("ip", &["-n", &vm1, "-j", "addr", "show", "dev", "eth0"]);
    assert!(eth0.contains("10.213.0.2"), "vm1 eth0: {eth0}");
    assert!(eth0.contains(&rds_net::mac_string(rds_net::mac_for("vm-one"))), "vm1 eth0 MAC: {eth0}");

    // 1. No egress: nothing but nothing.
    in_ns(&vm1, move || {
        assert!(!tcp_reaches(at(X, 80)), "no egress: X reachable over tcp");
        assert!(!udp_reaches(at(X, 9), "no-egress"), "no egress: X reachable over udp");
        assert!(dns_query(at(slot1.host_ip, 53), "allowed.test").is_none(), "no egress: resolver answered");
    });
    assert_forbidden_stays_closed(&vm1, slot1, slot2, "no egress");

    // 2. allow_ips [X]: X yes, Y no.
    apply(&hostside, "vm-one", slot1, policy(true, &["11.22.33.10"], &[]));
    in_ns(&vm1, move || {
        assert!(tcp_reaches(at(X, 80)), "allow X: X unreachable over tcp");
        assert!(udp_reaches(at(X, 9), "allow-x"), "allow X: X unreachable over udp");
        assert!(!tcp_reaches(at(Y, 80)), "allow X: Y reachable over tcp");
        assert!(!udp_reaches(at(Y, 9), "allow-x"), "allow X: Y reachable over udp");
    });
    assert_forbidden_stays_closed(&vm1, slot1, slot2, "allow X");

    // 3. Anti-spoofing: a datagram from VM2's address, sent by VM1, never reaches X.
    sh("ip", &["-n", &vm1, "addr", "add", "10.213.0.6/32", "dev", "eth0"]);
    in_ns(&vm1, move || {
        udp_send_from(Ipv4Addr::new(10, 213, 0, 6), at(X, 9), "forged-source");
        udp_send_from(slot1.guest_ip, at(X, 9), "genuine-source");
    });
    let deadline = Instant::now() + Duration::from_secs(3);
    while !x_log.lock().unwrap().iter().any(|p| p == "genuine-source") {
        assert!(Instant::now() < deadline, "the genuine datagram never reached X");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!x_log.lock().unwrap().iter().any(|p| p == "forged-source"), "a forged-source datagram reached X");
    sh("ip", &["-n", &vm1, "addr", "del", "10.213.0.6/32", "dev", "eth0"]);

    // 4. A second apply flips both directions live.
    apply(&hostside, "vm-one", slot1, policy(true, &["11.22.33.20/32"], &[]));
    in_ns(&vm1, move || {
        assert!(!tcp_reaches(at(X, 80)), "flip: X still reachable");
        assert!(tcp_reaches(at(Y, 80)), "flip: Y unreachable");
    });

    // 5. Everything public: still no host, metadata, other VMs, or foreign DNS.
    apply(&hostside, "vm-one", slot1, policy(true, &["0.0.0.0/0"], &[]));
    in_ns(&vm1, move || {
        assert!(tcp_reaches(at(X, 80)), "0.0.0.0/0: X unreachable");
        assert!(tcp_reaches(at(Y, 80)), "0.0.0.0/0: Y unreachable");
        assert!(dns_query(at(UPSTREAM_DNS, 53), "allowed.test").is_none(), "0.0.0.0/0: direct DNS answered");
        let (code, addrs) = dns_query(at(slot1.host_ip, 53), "blocked.test").expect("own resolver answers");
        assert_eq!((code, addrs), (ResponseCode::NoError, vec![Y]), "no allowDomains: everything resolves");
    });
    assert_forbidden_stays_closed(&vm1, slot1, slot2, "0.0.0.0/0");

    // 6. Domain rules.
    apply(&hostside, "vm-one", slot1, policy(true, &[], &["allowed.test"]));
    in_ns(&vm1, move || {
        assert!(!tcp_reaches(at(X, 80)), "domains: X reachable before it was resolved");
        let (code, addrs) = dns_query(at(slot1.host_ip, 53), "allowed.test").expect("resolver answers");
        assert_eq!((code, addrs), (ResponseCode::NoError, vec![X]));
        assert!(tcp_reaches(at(X, 80)), "domains: resolved X unreachable");
        let (code, _) = dns_query(at(slot1.host_ip, 53), "other.test").expect("resolver answers");
        assert_eq!(code, ResponseCode::NXDomain, "other.test must be NXDOMAIN");
        let (code, _) = dns_query(at(slot1.host_ip, 53), "blocked.test").expect("resolver answers");
        assert_eq!(code, ResponseCode::NXDomain, "blocked.test must be NXDOMAIN");
        assert!(!tcp_reaches(at(Y, 80)), "domains: blocked.test's address reachable");
        assert!(dns_query(at(UPSTREAM_DNS, 53), "allowed.test").is_none(), "domains: direct DNS answered");
        assert!(!tcp_reaches(at(UPSTREAM_DNS, 853)), "domains: DNS-over-TLS port reachable");
    });
    assert_forbidden_stays_closed(&vm1, slot1, slot2, "domains");

    // 7. Egress off again: the resolver is gone and X is closed.
    apply(&hostside, "vm-one", slot1, EgressPolicy::deny_all());
    in_ns(&vm1, move || {
        assert!(!tcp_reaches(at(X, 80)), "off again: X reachable");
        assert!(dns_query(at(slot1.host_ip, 53), "allowed.test").is_none(), "off again: resolver answered");
    });

    // 8. apply_policy latency.
    let bench = hostside
        .run(move |net| async move {
            let policies =
                [policy(true, &["11.22.33.10", "2001:db8::/32"], &["allowed.test"]), policy(false, &[], &[])];
            bench_apply(&net, "vm-one", &slot1, &policies, 50).await
        })
        .expect("bench");
    println!("BENCH {}", serde_json::to_string(&bench).unwrap());

    // 9. A TAP for a VMM gets its address; the resolver can listen on it.
    let slot3 = AddressPool::default().slot(2).unwrap();
    let tap = hostside
        .run(move |net| async move {
            let tap = net.attach_tap("vm-three", &slot3).await?;
            net.apply_policy("vm-three", &slot3, &policy(true, &[], &["allowed.test"])).await?;
            Ok::<_, rds_net::NetError>(tap)
        })
        .expect("tap");
    let tap_name = hostside.id.iface_name(2);
    assert_eq!(tap, tap_name);
    assert!(tap.len() <= 15, "{tap}");
    let tap_addr = sh("ip", &["-n", &host, "-j", "addr", "show", "dev", &tap_name]);
    assert!(tap_addr.contains("10.213.0.9"), "tap address: {tap_addr}");

    // 10. Reconciliation: known VMs are kept; detach + remove_orphans leaves nothing behind, and
    // never touches a second installation's table, interfaces or unrelated `rds`-looking links.
    let other = InstallationId::generate();
    let other_table = other.nft_table();
    let foreign = hostside
        .run({
            let other = other.clone();
            move |_net| async move {
                let theirs = Network::new(NetworkConfig::new(other, AddressPool::default())).await?;
                let slot = AddressPool::default().slot(9).unwrap();
                let tap = theirs.attach_tap("vm-foreign", &slot).await?;
                theirs.apply_policy("vm-foreign", &slot, &policy(true, &["11.22.33.10"], &[])).await?;
                Ok::<_, rds_net::NetError>(tap)
            }
        })
        .expect("a second installation's VM");
    sh("ip", &["-n", &host, "link", "add", "rdsv5", "type", "veth", "peer", "name", "rdsv5p"]);
    sh("ip", &["-n", &host, "link", "set", "rdsv5", "alias", "rds-vm:someone-else"]);
    let kept = hostside
        .run(|net| async move {
            let known: HashSet<String> = ["vm-one", "vm-two", "vm-three"].map(String::from).into();
            net.remove_orphans(&known).await
        })
        .expect("remove_orphans with all known");
    assert!(kept.rules_removed.is_empty() && kept.links_removed.is_empty(), "known VMs removed: {kept:?}");
    let report = hostside
        .run(move |net| async move {
            net.detach("vm-one", &slot1).await?;
            net.detach("vm-one", &slot1).await?; // idempotent
            net.remove_orphans(&HashSet::new()).await
        })
        .expect("detach + remove_orphans");
    assert_eq!(report.rules_removed, vec![1, 2], "orphan rules: {report:?}");
    let ours = hostside.id.nft_table();
    let ruleset = sh("ip", &["netns", "exec", &host, "nft", "-j", "list", "table", "inet", &ours]);
    let listing: serde_json::Value = serde_json::from_str(&ruleset).unwrap();
    for item in listing["nftables"].as_array().unwrap() {
        for kind in ["chain", "set", "map"] {
            if let Some(name) = item.get(kind).and_then(|o| o["name"].as_str()) {
                assert!(!name.starts_with("vm-") || name == "vm-fwd" || name == "vm-in", "left behind: {kind} {name}");
            }
        }
        if let Some(map) = item.get("map") {
            assert!(map.get("elem").is_none(), "dispatch map still has entries: {map}");
        }
    }
    let links = sh("ip", &["-n", &host, "-o", "link", "show"]);
    assert!(!links.contains(&hostside.id.iface_wildcard().replace('*', "")), "VM interfaces left behind:\n{links}");
    // The other installation's VM and the unrelated interface are untouched.
    assert!(links.contains(&format!("{foreign}:")) && links.contains("rdsv5:"), "foreign links removed:\n{links}");
    let theirs = sh("ip", &["netns", "exec", &host, "nft", "list", "table", "inet", &other_table]);
    assert!(theirs.contains("vm-9-fwd") && theirs.contains("vm=vm-foreign"), "foreign rules removed:\n{theirs}");
    assert!(sh("ip", &["-n", &vm2, "-o", "link", "show"]).lines().all(|l| !l.contains("eth0")), "vm2 eth0 left");

    // The real root namespace was never touched.
    let hostside_prefix = hostside.id.iface_wildcard().replace('*', "");
    drop(hostside);
    assert_eq!(std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap(), root_forwarding);
    let root_links = sh("ip", &["-o", "link", "show"]);
    assert!(!root_links.contains(&hostside_prefix), "a VM interface appeared in the root ns:\n{root_links}");
}
