//! nftables: builds JSON batches (libnftables-json(5)) and applies each atomically with
//! `nft -j -f -`. Everything lives in the installation's own `table inet rds-<id>`; nothing else
//! on the host (another installation's table included) is touched.
//!
//! Layout:
//! * base chains `forward`, `input` (filter) and `postrouting` (nat) dispatch packets from
//!   `rds<id><idx>` through the verdict maps `vm-fwd` / `vm-in` to the VM's chains
//!   `vm-<idx>-fwd` / `vm-<idx>-in`; an `rds<id>*` interface without a map entry is dropped.
//! * per VM: sets `vm-<idx>-allow4|allow6|private4|dns4`; the first rule of each VM chain
//!   carries the comment `vm=<id>` so orphans can be traced back to their VM.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde_json::{json, Value};
use tokio::sync::Mutex;

use crate::cmd::{self, ToolError};
use crate::names::InstallationId;
use crate::policy::EgressPolicy;
use crate::pool::Slot;

/// Table family.
const FAMILY: &str = "inet";
/// Most addresses a VM's resolver may add to its dynamic set.
pub const DNS_SET_SIZE: u32 = 1024;

/// Destinations that are not "the public internet": reachable only through an allow entry
/// inside them, never via `0.0.0.0/0` or a resolved domain.
const SPECIAL_V4: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/4",
    "240.0.0.0/4",
];
/// Metadata services live here; never reachable.
const METADATA_V4: &str = "169.254.0.0/16";

/// Serialises `nft` invocations: concurrent transactions on one table can fail spuriously.
static NFT_LOCK: Mutex<()> = Mutex::const_new(());

/// Applies a batch of commands atomically.
pub async fn apply(commands: Vec<Value>) -> Result<(), ToolError> {
    let batch = json!({ "nftables": commands }).to_string();
    let _guard = NFT_LOCK.lock().await;
    cmd::run("nft", &["-j", "-f", "-"], Some(batch.as_bytes())).await.map(|_| ())
}

/// `nft -j list table inet rds-<id>`, or `None` when the table does not exist.
pub async fn list_table(id: &InstallationId) -> Result<Option<Value>, ToolError> {
    let table = id.nft_table();
    let _guard = NFT_LOCK.lock().await;
    match cmd::run("nft", &["-j", "list", "table", FAMILY, &table], None).await {
        Ok(text) => Ok(serde_json::from_str(&text).ok()),
        Err(err) if err.is_not_found() => Ok(None),
        Err(err) => Err(err),
    }
}

fn obj(t: &str, kind: &str, name: &str) -> Value {
    json!({ kind: { "family": FAMILY, "table": t, "name": name } })
}

fn with(mut base: Value, kind: &str, extra: Value) -> Value {
    let inner = base.get_mut(kind).and_then(Value::as_object_mut).expect("object built above");
    if let Value::Object(fields) = extra {
        inner.extend(fields);
    }
    base
}

fn add(what: Value) -> Value {
    json!({ "add": what })
}
fn flush(what: Value) -> Value {
    json!({ "flush": what })
}
fn delete(what: Value) -> Value {
    json!({ "delete": what })
}

fn rule(t: &str, chain: &str, expr: Vec<Value>) -> Value {
    add(json!({ "rule": { "family": FAMILY, "table": t, "chain": chain, "expr": expr } }))
}

fn rule_with_comment(t: &str, chain: &str, expr: Vec<Value>, comment: &str) -> Value {
    add(json!({ "rule": { "family": FAMILY, "table": t, "chain": chain, "expr": expr, "comment": comment } }))
}

fn elements(t: &str, set: &str, elem: Vec<Value>) -> Value {
    json!({ "element": { "family": FAMILY, "table": t, "name": set, "elem": elem } })
}

fn matches(op: &str, left: Value, right: Value) -> Value {
    json!({ "match": { "op": op, "left": left, "right": right } })
}
fn meta(key: &str) -> Value {
    json!({ "meta": { "key": key } })
}
fn field(protocol: &str, name: &str) -> Value {
    json!({ "payload": { "protocol": protocol, "field": name } })
}
fn prefix(net: &IpNet) -> Value {
    json!({ "prefix": { "addr": net.network().to_string(), "len": net.prefix_len() } })
}
fn verdict(kind: &str) -> Value {
    json!({ kind: null })
}
fn ct_established() -> Value {
    matches("in", json!({ "ct": { "key": "state" } }), json!(["established", "related"]))
}
fn set_ct_mark(mark: u32) -> Value {
    json!({ "mangle": { "key": { "ct": { "key": "mark" } }, "value": mark } })
}
fn interval_set(t: &str, name: &str, addr_type: &str) -> Value {
    with(obj(t, "set", name), "set", json!({ "type": addr_type, "flags": ["interval"] }))
}

/// Creates (or refreshes) the table, base chains, maps and static sets. Keeps VM chains and
/// map entries, so a restarted manager re-adopts running VMs without a gap.
pub fn base_batch(id: &InstallationId) -> Vec<Value> {
    let table = id.nft_table();
    let t = table.as_str();
    let wildcard = id.iface_wildcard();
    let special: Vec<Value> =
        SPECIAL_V4.iter().map(|cidr| prefix(&cidr.parse::<IpNet>().expect("static CIDR"))).collect();
    let mut batch = vec![
        add(json!({ "table": { "family": FAMILY, "name": t } })),
        add(interval_set(t, "special4", "ipv4_addr")),
        flush(obj(t, "set", "special4")),
        add(elements(t, "special4", special)),
        add(with(obj(t, "set", "masq4"), "set", json!({ "type": "ipv4_addr" }))),
        add(with(obj(t, "map", "vm-fwd"), "map", json!({ "type": "ifname", "map": "verdict" }))),
        add(with(obj(t, "map", "vm-in"), "map", json!({ "type": "ifname", "map": "verdict" }))),
    ];
    for (name, kind, hook, prio) in [
        ("forward", "filter", "forward", 0),
        ("input", "filter", "input", 0),
        ("postrouting", "nat", "postrouting", 100),
    ] {
        batch.push(add(with(
            obj(t, "chain", name),
            "chain",
            json!({ "type": kind, "hook": hook, "prio": prio, "policy": "accept" }),
        )));
        batch.push(flush(obj(t, "chain", name)));
    }
    let from_vm = |m: &str| matches("==", meta("iifname"), json!(m));
    batch.extend([
        rule(t, "forward", vec![json!({ "vmap": { "key": meta("iifname"), "data": "@vm-fwd" } })]),
        rule(t, "forward", vec![from_vm(&wildcard), verdict("drop")]),
        rule(t, "forward", vec![matches("==", meta("oifname"), json!(wildcard)), ct_established(), verdict("accept")]),
        rule(t, "forward", vec![matches("==", meta("oifname"), json!(wildcard)), verdict("drop")]),
        rule(t, "input", vec![json!({ "vmap": { "key": meta("iifname"), "data": "@vm-in" } })]),
        rule(t, "input", vec![from_vm(&wildcard), verdict("drop")]),
        rule(
            t,
            "postrouting",
            vec![
                matches("==", field("ip", "saddr"), json!("@masq4")),
                matches("!=", meta("oifname"), json!(wildcard)),
                json!({ "masquerade": null }),
            ],
        ),
    ]);
    batch
}

/// Names of one VM's nft objects.
pub struct VmObjects {
    /// Forward (egress) chain.
    pub fwd: String,
    /// Input (to the host) chain.
    pub input: String,
    /// Static IPv4 allow set.
    pub allow4: String,
    /// Static IPv6 allow set.
    pub allow6: String,
    /// Allow entries inside special-purpose ranges.
    pub private4: String,
    /// Addresses learned by the VM's resolver.
    pub dns4: String,
}

impl VmObjects {
    /// Object names for slot `index`.
    pub fn for_index(index: u32) -> VmObjects {
        let p = format!("vm-{index}");
        VmObjects {
            fwd: format!("{p}-fwd"),
            input: format!("{p}-in"),
            allow4: format!("{p}-allow4"),
            allow6: format!("{p}-allow6"),
            private4: format!("{p}-private4"),
            dns4: format!("{p}-dns4"),
        }
    }

    /// The definitions of the VM's sets (identical on every `add`, or nft refuses it).
    fn set_definitions(&self, t: &str) -> Vec<Value> {
        vec![
            interval_set(t, &self.allow4, "ipv4_addr"),
            interval_set(t, &self.allow6, "ipv6_addr"),
            interval_set(t, &self.private4, "ipv4_addr"),
            with(
                obj(t, "set", &self.dns4),
                "set",
                json!({ "type": "ipv4_addr", "flags": ["timeout"], "size": DNS_SET_SIZE }),
            ),
        ]
    }

    fn sets(&self) -> [&str; 4] {
        [&self.allow4, &self.allow6, &self.private4, &self.dns4]
    }
}

/// Everything `apply_policy` needs to build a VM's batch.
pub struct VmRules<'a> {
    /// The installation (its table and interface names).
    pub id: &'a InstallationId,
    /// VM id (recorded in a rule comment).
    pub vm_id: &'a str,
    /// The VM's addresses.
    pub slot: &'a Slot,
    /// The whole VM pool (other VMs are never reachable).
    pub pool: Ipv4Net,
    /// The policy.
    pub policy: &'a EgressPolicy,
    /// Connection mark of this policy generation; older connections are re-checked.
    pub epoch: u32,
    /// Whether to forget addresses the resolver learned (domain list changed).
    pub flush_dns: bool,
}

/// One atomic batch that (re)creates a VM's chains and sets and hooks them up.
pub fn vm_batch(rules: &VmRules<'_>) -> Vec<Value> {
    let VmRules { id, vm_id, slot, pool, policy, epoch, flush_dns } = *rules;
    let table = id.nft_table();
    let t = table.as_str();
    let names = VmObjects::for_index(slot.index);
    let iface = id.iface_name(slot.index);
    let egress = policy.outbound_internet;
    let comment = format!("vm={vm_id}");
    let mut batch = Vec::new();

    for chain in [&names.fwd, &names.input] {
        batch.push(add(obj(t, "chain", chain)));
        batch.push(flush(obj(t, "chain", chain)));
    }
    let (v4, v6, private4) = split_allow(policy);
    batch.extend(names.set_definitions(t).into_iter().map(add));
    for (set, members) in [
        (&names.allow4, v4.iter().map(|n| prefix(&IpNet::V4(*n))).collect::<Vec<_>>()),
        (&names.allow6, v6.iter().map(|n| prefix(&IpNet::V6(*n))).collect()),
        (&names.private4, private4.iter().map(|n| prefix(&IpNet::V4(*n))).collect()),
    ] {
        batch.push(flush(obj(t, "set", set)));
        if egress && !members.is_empty() {
            batch.push(add(elements(t, set, members)));
        }
    }
    if flush_dns || !policy.filters_domains() {
        batch.push(flush(obj(t, "set", &names.dns4)));
    }

    let guest = slot.guest_ip.to_string();
    let not_ipv4 = vec![matches("!=", meta("nfproto"), json!("ipv4")), verdict("drop")];
    let spoofed = vec![matches("!=", field("ip", "saddr"), json!(guest)), verdict("drop")];

    // Packets to the host itself: only DNS to this VM's own resolver, and only with egress.
    batch.push(rule_with_comment(t, &names.input, not_ipv4.clone(), &comment));
    batch.push(rule(t, &names.input, spoofed.clone()));
    if egress {
        batch.push(rule(
            t,
            &names.input,
            vec![
                matches("==", field("ip", "daddr"), json!(slot.host_ip.to_string())),
                matches("==", meta("l4proto"), json!("udp")),
                matches("==", field("udp", "dport"), json!(53)),
                verdict("accept"),
            ],
        ));
    }
    batch.push(rule(t, &names.input, vec![verdict("drop")]));

    // Forwarded packets: hard drops first, then this policy generation's allowances.
    let daddr = || field("ip", "daddr");
    let net = |n: &str| prefix(&n.parse::<IpNet>().expect("static CIDR"));
    batch.push(rule_with_comment(t, &names.fwd, not_ipv4, &comment));
    batch.push(rule(t, &names.fwd, spoofed));
    batch.push(rule(t, &names.fwd, vec![matches("==", daddr(), net(METADATA_V4)), verdict("drop")]));
    batch.push(rule(t, &names.fwd, vec![matches("==", daddr(), prefix(&IpNet::V4(pool))), verdict("drop")]));
    batch.push(rule(
        t,
        &names.fwd,
        vec![
            matches("==", meta("l4proto"), json!({ "set": ["tcp", "udp"] })),
            matches("==", field("th", "dport"), json!({ "set": [53, 853] })),
            verdict("drop"),
        ],
    ));
    if egress {
        let mark = json!({ "ct": { "key": "mark" } });
        batch.push(rule(t, &names.fwd, vec![ct_established(), matches("==", mark, json!(epoch)), verdict("accept")]));
        batch.push(rule(
            t,
            &names.fwd,
            vec![
                matches("==", daddr(), json!("@special4")),
                matches("!=", daddr(), json!(format!("@{}", names.private4))),
                verdict("drop"),
            ],
        ));
        for set in [&names.allow4, &names.dns4] {
            batch.push(rule(
                t,
                &names.fwd,
                vec![matches("==", daddr(), json!(format!("@{set}"))), set_ct_mark(epoch), verdict("accept")],
            ));
        }
    }
    batch.push(rule(t, &names.fwd, vec![verdict("drop")]));

    for (map, chain) in [("vm-fwd", &names.fwd), ("vm-in", &names.input)] {
        batch.push(add(elements(t, map, vec![json!([iface, { "jump": { "target": chain } }])])));
    }
    let masq = elements(t, "masq4", vec![json!(guest)]);
    batch.push(add(masq.clone()));
    if !egress {
        batch.push(delete(masq));
    }
    batch
}

/// Removes everything of slot `index` (absent objects are fine: each is ensured, then deleted).
pub fn remove_vm_batch(id: &InstallationId, index: u32, guest_ip: Ipv4Addr) -> Vec<Value> {
    let table = id.nft_table();
    let t = table.as_str();
    let names = VmObjects::for_index(index);
    let iface = id.iface_name(index);
    let mut batch = Vec::new();
    for chain in [&names.fwd, &names.input] {
        batch.push(add(obj(t, "chain", chain)));
        batch.push(flush(obj(t, "chain", chain)));
    }
    for (map, chain) in [("vm-fwd", &names.fwd), ("vm-in", &names.input)] {
        let entry = elements(t, map, vec![json!([iface, { "jump": { "target": chain } }])]);
        batch.push(add(entry.clone()));
        batch.push(delete(entry));
    }
    for chain in [&names.fwd, &names.input] {
        batch.push(delete(obj(t, "chain", chain)));
    }
    // Ensure with the exact definitions (a differing `add set` fails), then delete.
    batch.extend(names.set_definitions(t).into_iter().map(add));
    for set in names.sets() {
        batch.push(delete(obj(t, "set", set)));
    }
    let masq = elements(t, "masq4", vec![json!(guest_ip.to_string())]);
    batch.push(add(masq.clone()));
    batch.push(delete(masq));
    batch
}

/// Adds (or refreshes the timeout of) resolver-learned addresses in a VM's dynamic set.
pub fn dns_elements_batch(id: &InstallationId, index: u32, learned: &[(Ipv4Addr, u32)]) -> Vec<Value> {
    let table = id.nft_table();
    let t = table.as_str();
    let set = VmObjects::for_index(index).dns4;
    let mut batch = Vec::new();
    for (addr, timeout) in learned {
        let plain = elements(t, &set, vec![json!(addr.to_string())]);
        // add + delete + add: idempotent and resets the timeout of an existing element.
        batch.push(add(plain.clone()));
        batch.push(delete(plain));
        batch.push(add(elements(t, &set, vec![json!({ "elem": { "val": addr.to_string(), "timeout": timeout } })])));
    }
    batch
}

/// IPv4 allow entries, IPv6 allow entries, and the IPv4 entries inside special ranges; each
/// merged, because interval sets reject overlapping elements.
fn split_allow(policy: &EgressPolicy) -> (Vec<Ipv4Net>, Vec<Ipv6Net>, Vec<Ipv4Net>) {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for net in &policy.allow_ips {
        match net {
            IpNet::V4(n) => v4.push(*n),
            IpNet::V6(n) => v6.push(*n),
        }
    }
    let private4: Vec<Ipv4Net> = v4.iter().copied().filter(is_special).collect();
    (Ipv4Net::aggregate(&v4), Ipv6Net::aggregate(&v6), Ipv4Net::aggregate(&private4))
}

/// Whether an allow entry lies inside a special-purpose range (and so explicitly names it).
fn is_special(net: &Ipv4Net) -> bool {
    SPECIAL_V4.iter().any(|cidr| cidr.parse::<Ipv4Net>().expect("static CIDR").contains(net))
}

/// What `list_table` shows about VMs: slot index → VM id (if recorded), plus every VM object.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct VmInventory {
    /// Slot index → VM id from the `vm=<id>` rule comment (or `None` if no comment survived).
    pub vms: BTreeMap<u32, Option<String>>,
}

/// Finds every `vm-<idx>-*` chain and set in a `nft -j list table` answer.
pub fn inventory(listing: &Value) -> VmInventory {
    let mut vms: BTreeMap<u32, Option<String>> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for item in listing.get("nftables").and_then(Value::as_array).into_iter().flatten() {
        for kind in ["chain", "set"] {
            if let Some(index) = item.get(kind).and_then(|o| o.get("name")).and_then(Value::as_str).and_then(vm_index) {
                seen.insert(index);
            }
        }
        if let Some(rule) = item.get("rule") {
            let index = rule.get("chain").and_then(Value::as_str).and_then(vm_index);
            let vm_id = rule.get("comment").and_then(Value::as_str).and_then(|c| c.strip_prefix("vm="));
            if let (Some(index), Some(vm_id)) = (index, vm_id) {
                vms.insert(index, Some(vm_id.to_string()));
            }
        }
    }
    for index in seen {
        vms.entry(index).or_insert(None);
    }
    VmInventory { vms }
}

/// Slot index from an object name `vm-<idx>-<suffix>`.
fn vm_index(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("vm-")?;
    let (digits, _) = rest.split_once('-')?;
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::AddressPool;

    /// Every table named anywhere in `value` (`"table"` fields, and `add table` objects).
    fn tables(value: &Value, found: &mut BTreeSet<String>) {
        match value {
            Value::Object(map) => {
                for (key, inner) in map {
                    match (key.as_str(), inner) {
                        ("table", Value::String(name)) => {
                            found.insert(name.clone());
                        }
                        ("table", Value::Object(table)) => {
                            found.insert(table["name"].as_str().unwrap_or_default().to_string());
                        }
                        _ => tables(inner, found),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|item| tables(item, found)),
            _ => {}
        }
    }

    #[test]
    fn every_batch_names_only_its_own_installation() {
        let id = InstallationId::parse("abcdef").unwrap();
        let pool = AddressPool::default();
        let slot = pool.slot(3).unwrap();
        let policy = EgressPolicy::from_request(Some(true), &["8.8.8.8".into()], &["example.com".into()]).unwrap();
        let rules = VmRules {
            id: &id,
            vm_id: "vm-1",
            slot: &slot,
            pool: pool.cidr(),
            policy: &policy,
            epoch: 1,
            flush_dns: true,
        };
        let learned = [("93.184.216.34".parse().unwrap(), 60)];
        for batch in [
            base_batch(&id),
            vm_batch(&rules),
            remove_vm_batch(&id, 3, slot.guest_ip),
            dns_elements_batch(&id, 3, &learned),
        ] {
            let mut found = BTreeSet::new();
            tables(&Value::Array(batch.clone()), &mut found);
            assert_eq!(found, BTreeSet::from(["rds-abcdef".to_string()]), "{batch:?}");
            let text = Value::Array(batch).to_string();
            assert!(!text.contains("rdsv"), "{text}");
        }
        let text = Value::Array(vm_batch(&rules)).to_string();
        assert!(text.contains("\"rdsabcdef3\""), "the VM's interface is named with the id: {text}");
        let text = Value::Array(base_batch(&id)).to_string();
        assert!(text.contains("\"rdsabcdef*\""), "the catch-all drop covers only our interfaces: {text}");
    }

    #[test]
    fn inventory_recovers_vm_ids_from_rule_comments() {
        let listing = json!({ "nftables": [
            { "chain": { "name": "vm-3-fwd" } },
            { "rule": { "chain": "vm-3-fwd", "comment": "vm=abc" } },
            { "set": { "name": "vm-7-dns4" } },
            { "chain": { "name": "forward" } },
        ]});
        let found = inventory(&listing);
        assert_eq!(found.vms.get(&3), Some(&Some("abc".to_string())));
        assert_eq!(found.vms.get(&7), Some(&None));
        assert_eq!(found.vms.len(), 2);
    }

    #[test]
    fn allow_entries_are_merged_and_private_ones_singled_out() {
        let policy = EgressPolicy::from_request(
            Some(true),
            &["10.0.0.0/8".into(), "10.1.0.0/16".into(), "8.8.8.8".into(), "0.0.0.0/0".into()],
            &[],
        )
        .unwrap();
        let (v4, _, private4) = split_allow(&policy);
        assert_eq!(v4, vec!["0.0.0.0/0".parse::<Ipv4Net>().unwrap()]);
        assert_eq!(private4, vec!["10.0.0.0/8".parse::<Ipv4Net>().unwrap()]);
        assert!(is_special(&"10.1.0.0/16".parse().unwrap()));
        assert!(!is_special(&"0.0.0.0/0".parse().unwrap()));
        assert!(!is_special(&"8.8.8.8/32".parse().unwrap()));
    }
}
