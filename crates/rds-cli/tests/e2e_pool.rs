//! End-to-end: the warm pool through the real `rds serve` on the sandbox runtime: members are
//! hidden and outside the quota, a create with the template sizes takes one (whatever its
//! secrets or links), the pool refills, and a manager restart adopts the members that still run.

mod common;

use common::{wait_for_pool, Server};
use serde_json::json;

const SECRET_KEY: &str = "0123456789abcdef0123456789abcdef-pool-test";

fn pool_env() -> Vec<(&'static str, &'static str)> {
    vec![("ENABLE_WARM_POOL", "true"), ("WARM_POOL_TARGET", "1"), ("VM_SECRET_KEY", SECRET_KEY), ("MAX_VMS", "2")]
}

#[test]
fn creates_of_the_template_size_are_served_warm_and_the_pool_refills() {
    require_sandbox!();
    let s = Server::start(&pool_env());
    let pool = wait_for_pool(&s, 1);
    assert_eq!((pool["enabled"].as_bool(), pool["target"].as_u64()), (Some(true), Some(1)), "{pool}");
    assert_eq!((pool["cpu"].as_u64(), pool["memMb"].as_u64()), (Some(1), Some(256)));
    // Members are hidden.
    assert_eq!(s.call("GET", "/v1/vms", None).1, json!([]));

    // A provider with secrets is served from the pool and gets them.
    let (st, vm) =
        s.call("POST", "/v1/vms", Some(json!({"cpu": 1, "memMb": 256, "secretEnv": ["POOL_TOKEN=s3cr3t-v4lue"]})));
    assert_eq!(st, 201, "{vm}");
    assert_eq!(vm["provisionMode"], "pool", "{vm}");
    assert_eq!(vm["secretEnvKeys"], json!(["POOL_TOKEN"]));
    let id = vm["id"].as_str().unwrap().to_string();
    // (Output is redacted, so compare inside the VM.)
    let r = s.exec(&id, "[ \"$POOL_TOKEN\" = s3cr3t-v4lue ] && echo present");
    assert_eq!(r["stdout"], "present\n", "{r}");
    let (_, listed) = s.call("GET", "/v1/vms", None);
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "the taken member is listed now: {listed}");

    // The pool refills; other sizes boot and are no miss.
    wait_for_pool(&s, 1);
    let (st, cold) = s.call("POST", "/v1/vms", Some(json!({"cpu": 1, "memMb": 320})));
    assert_eq!(st, 201, "{cold}");
    assert_eq!(cold["provisionMode"], "boot");
    let (_, pool) = s.call("GET", "/v1/pool", None);
    assert_eq!((pool["hits"].as_u64(), pool["misses"].as_u64()), (Some(1), Some(0)), "{pool}");

    // MAX_VMS=2 is full with two VMs: the ready member does not count, and is not handed out past the quota.
    let (st, refused) = s.call("POST", "/v1/vms", Some(json!({"cpu": 1, "memMb": 256})));
    assert_eq!(st, 429, "{refused}");
    assert_eq!(wait_for_pool(&s, 1)["hits"], 1);
}

#[test]
fn a_consumer_served_warm_gets_its_peer_files() {
    require_sandbox!();
    let s = Server::start(&pool_env());
    // The provider boots cold (other size); the consumer takes the member.
    let (st, provider) = s.call("POST", "/v1/vms", Some(json!({"cpu": 1, "memMb": 320})));
    assert_eq!(st, 201, "{provider}");
    let provider = provider["id"].as_str().unwrap().to_string();
    s.make_calc_provider(&provider);
    wait_for_pool(&s, 1);
    let body = json!({"cpu": 1, "memMb": 256, "peerLinks": [{"alias": "calc", "vmId": provider}]});
    let (st, consumer) = s.call("POST", "/v1/vms", Some(body));
    assert_eq!(st, 201, "{consumer}");
    assert_eq!(consumer["provisionMode"], "pool", "{consumer}");
    let id = consumer["id"].as_str().unwrap();
    let r = s.exec(
        id,
        "test -f /workspace/peers/calc/index.ts && grep -q '\"calc\"' /workspace/peers/index.json && echo linked",
    );
    assert_eq!(r["stdout"], "linked\n", "{r}");
}

#[test]
fn a_restarted_manager_adopts_running_members_instead_of_booting_new_ones() {
    require_sandbox!();
    let mut s = Server::start(&pool_env());
    wait_for_pool(&s, 1);
    let member = s.stored_pool_members();
    assert_eq!(member.len(), 1, "{member:?}");
    s.kill9();
    s.restart();
    wait_for_pool(&s, 1);
    assert_eq!(s.stored_pool_members(), member, "the same member, adopted");
    let (st, vm) = s.call("POST", "/v1/vms", Some(json!({"cpu": 1, "memMb": 256})));
    assert_eq!(st, 201, "{vm}");
    assert_eq!((vm["id"].as_str(), vm["provisionMode"].as_str()), (Some(member[0].as_str()), Some("pool")));
    assert_eq!(s.exec(&member[0], "echo warm")["stdout"], "warm\n");
}
