//! The contract every [`Store`] backend must pass, as async test cases over a [`StoreFactory`].
//!
//! A backend's integration test runs them all with one line, one `#[tokio::test]` per case:
//!
//! ```text
//! rds_store::conformance_tests!(MyFactory::new());
//! ```
//!
//! Cases panic (assert) on a broken promise. The concurrency cases use two stores over one
//! database, as two managers sharing it would, and need a multi-threaded runtime.

use std::collections::HashSet;
use std::sync::Arc;

use crate::{
    ApiKeyRecord, ExecLogRecord, ImagePart, ImageRecord, NetSlotRequest, NewEvent, NewVm, PeerCallRecord,
    PeerLinkRecord, PoolClaim, Quota, SealedSecrets, SnapshotRecord, SnapshotState, Store, StoreError, VmLimits,
    VmNetworkRecord, VmRecord, VmState,
};

/// Makes stores of one backend for the suite.
#[async_trait::async_trait]
pub trait StoreFactory: Send + Sync {
    /// A new, empty store that no other case uses.
    async fn fresh(&self) -> Arc<dyn Store>;
    /// Two independent stores (separate connections, as two managers hold) over one new, empty
    /// database.
    async fn pair(&self) -> (Arc<dyn Store>, Arc<dyn Store>);
}

/// Runs every conformance case as its own `#[tokio::test]` (multi-threaded), named after the
/// case. `$factory` is evaluated once per test and must implement [`StoreFactory`]; the calling
/// crate needs `tokio` with its test macros.
#[macro_export]
macro_rules! conformance_tests {
    ($factory:expr) => {
        $crate::conformance_tests!(@cases $factory;
            vm_round_trips_and_tombstones_are_hidden,
            unknown_vms_are_not_found,
            deleting_vms_are_listed_and_count_as_live,
            net_slots_are_unique_freed_and_hidden_for_deleted_vms,
            allocate_net_slot_keeps_a_valid_slot_and_replaces_a_skipped_one,
            create_vm_writes_the_vm_policy_secrets_links_and_lowest_slot,
            create_vm_over_the_vm_quota_leaves_nothing_behind,
            create_vm_without_a_free_slot_leaves_nothing_behind,
            create_vm_with_a_missing_image_or_taken_id_leaves_nothing_behind,
            finish_vm_delete_tombstones_and_frees_everything_once,
            exec_logs_are_newest_first_with_has_more,
            revoked_and_expired_keys_are_not_active,
            keys_are_listed_revoked_one_by_one_and_touched,
            peer_links_upsert_sync_list_and_delete,
            put_peer_link_limits_only_new_links,
            peer_calls_are_listed_for_consumer_and_provider,
            secrets_keep_key_names_beside_the_sealed_blob,
            images_record_parts_and_manifest,
            delete_image_refuses_while_in_use_and_clears_the_default,
            settings_upsert_remove_and_init_once,
            events_are_newest_first_and_keep_meta,
            concurrent_creates_on_two_stores_never_exceed_the_vm_quota,
            concurrent_creates_on_two_stores_never_share_a_slot,
            concurrent_slot_allocations_on_two_stores_never_share_a_slot,
            concurrent_init_setting_on_two_stores_agrees,
            snapshots_are_created_finished_listed_and_deleted,
            provision_mode_and_snapshot_origin_round_trip,
            pool_members_sit_outside_the_quota_until_claimed_whole,
        );
    };
    (@cases $factory:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                $crate::conformance::$case(&$factory).await;
            }
        )*
    };
}

/// A VM record in `state`, created at `created_at`.
pub fn vm(id: &str, state: VmState, created_at: i64) -> VmRecord {
    VmRecord {
        id: id.into(),
        state,
        state_reason: None,
        cpu: 1,
        mem_mb: 256,
        disk_mb: 1024,
        runtime: "sandbox".into(),
        image_id: None,
        handle_json: None,
        outbound_internet: false,
        allow_ips_json: Some("[]".into()),
        secret_env_ciphertext: None,
        created_at,
        updated_at: created_at,
        provision_mode: None,
        snapshot_id: None,
        pool: false,
    }
}

fn link(consumer: &str, alias: &str, provider: &str) -> PeerLinkRecord {
    PeerLinkRecord {
        consumer_vm_id: consumer.into(),
        alias: alias.into(),
        provider_vm_id: provider.into(),
        source_mode: "hidden".into(),
        manifest_json: None,
        sync_status: "pending".into(),
        sync_message: None,
        synced_at: None,
    }
}

fn new_vm(id: &str, capacity: Option<u32>) -> NewVm {
    NewVm {
        record: vm(id, VmState::Creating, crate::now_ms()),
        egress_policy_json: Some(r#"{"outboundInternet":false}"#.into()),
        secrets: None,
        links: vec![],
        net: capacity.map(|capacity| NetSlotRequest { capacity, skip: vec![] }),
    }
}

const NO_LIMIT: VmLimits = VmLimits { max_vms: u64::MAX };

fn ids(vms: &[VmRecord]) -> Vec<&str> {
    vms.iter().map(|v| v.id.as_str()).collect()
}

fn is_not_found<T: std::fmt::Debug>(r: Result<T, StoreError>) -> bool {
    matches!(r, Err(StoreError::NotFound(_)))
}

/// Round trip of a VM's fields, state and handle; tombstones are readable but hidden from list
/// and count; list is oldest first.
pub async fn vm_round_trips_and_tombstones_are_hidden(f: &impl StoreFactory) {
    let s = f.fresh().await;
    let mut b = vm("b", VmState::Running, 20);
    b.image_id = Some("img-1".into());
    b.secret_env_ciphertext = Some(b"x".to_vec());
    s.insert_vm(&vm("a", VmState::Creating, 30)).await.unwrap();
    s.insert_vm(&b).await.unwrap();
    s.insert_vm(&vm("c", VmState::Stopped, 20)).await.unwrap();
    assert_eq!(s.get_vm("b").await.unwrap().as_ref(), Some(&b), "every field round-trips");
    assert_eq!(ids(&s.list_vms().await.unwrap()), ["b", "c", "a"], "oldest first, then by id");
    s.set_vm_state("a", VmState::Error, Some("boot failed")).await.unwrap();
    s.set_vm_handle("b", Some(r#"{"pid":1}"#)).await.unwrap();
    let a = s.get_vm("a").await.unwrap().unwrap();
    assert_eq!((a.state, a.state_reason.as_deref()), (VmState::Error, Some("boot failed")));
    assert_eq!(s.get_vm("b").await.unwrap().unwrap().handle_json.as_deref(), Some(r#"{"pid":1}"#));
    s.set_vm_state("a", VmState::Running, None).await.unwrap();
    assert_eq!(s.get_vm("a").await.unwrap().unwrap().state_reason, None, "None clears the reason");
    s.set_vm_handle("b", None).await.unwrap();
    assert_eq!(s.get_vm("b").await.unwrap().unwrap().handle_json, None);
    assert_eq!(s.count_live_vms().await.unwrap(), 3);
    s.set_vm_state("a", VmState::Deleted, None).await.unwrap();
    assert_eq!(s.count_live_vms().await.unwrap(), 2);
    assert_eq!(ids(&s.list_vms().await.unwrap()), ["b", "c"]);
    assert_eq!(s.get_vm("a").await.unwrap().unwrap().state, VmState::Deleted, "tombstones stay readable");
    assert!(
        matches!(s.insert_vm(&vm("a", VmState::Creating, 1)).await, Err(StoreError::Conflict { .. })),
        "an id is never reused, tombstone or not"
    );
}

/// Every by-id change of a missing VM is `NotFound`; reads answer `None` or nothing.
pub async fn unknown_vms_are_not_found(f: &impl StoreFactory) {
    let s = f.fresh().await;
    assert_eq!(s.get_vm("zz").await.unwrap(), None);
    assert_eq!(s.vm_network("zz").await.unwrap(), None);
    assert!(s.vm_secret_keys("zz").await.unwrap().is_empty());
    assert!(is_not_found(s.set_vm_state("zz", VmState::Running, None).await));
    assert!(is_not_found(s.set_vm_handle("zz", None).await));
    assert!(is_not_found(s.set_vm_net_slot("zz", Some(1)).await));
    assert!(is_not_found(s.set_vm_egress_policy("zz", false, "{}").await));
    assert!(is_not_found(s.set_vm_secrets("zz", None, &[]).await));
    assert!(is_not_found(s.finish_vm_delete("zz").await));
    assert!(is_not_found(s.allocate_net_slot("zz", &NetSlotRequest { capacity: 4, skip: vec![] }).await));
    assert!(s.list_vms().await.unwrap().is_empty());
}

/// DELETING is stored, listed and counted until the tombstone.
pub async fn deleting_vms_are_listed_and_count_as_live(f: &impl StoreFactory) {
    let s = f.fresh().await;
    s.insert_vm(&vm("a", VmState::Stopped, 1)).await.unwrap();
    s.set_vm_state("a", VmState::Deleting, None).await.unwrap();
    assert_eq!(s.get_vm("a").await.unwrap().unwrap().state, VmState::Deleting);
    assert_eq!(s.list_vms().await.unwrap().len(), 1, "a VM being deleted is listed until it is gone");
    assert_eq!(s.count_live_vms().await.unwrap(), 1);
}

/// Explicit slots: unique among VMs, listed ascending, freed by `None` and ignored once DELETED.
pub async fn net_slots_are_unique_freed_and_hidden_for_deleted_vms(f: &impl StoreFactory) {
    let s = f.fresh().await;
    s.insert_vm(&vm("a", VmState::Running, 1)).await.unwrap();
    s.insert_vm(&vm("b", VmState::Running, 2)).await.unwrap();
    assert_eq!(s.vm_network("a").await.unwrap(), Some(VmNetworkRecord::default()));
    s.set_vm_net_slot("a", Some(3)).await.unwrap();
    s.set_vm_net_slot("b", Some(0)).await.unwrap();
    assert_eq!(s.used_net_slots().await.unwrap(), [0, 3]);
    assert!(
        matches!(s.set_vm_net_slot("b", Some(3)).await, Err(StoreError::Conflict { .. })),
        "a slot held by another VM must be refused"
    );
    assert_eq!(s.vm_network("b").await.unwrap().unwrap().net_slot, Some(0), "a refused change changes nothing");
    s.set_vm_net_slot("a", Some(3)).await.unwrap(); // setting one's own slot again is fine
    s.set_vm_egress_policy("a", true, r#"{"outboundInternet":true}"#).await.unwrap();
    let a = s.vm_network("a").await.unwrap().unwrap();
    assert_eq!(a.net_slot, Some(3));
    assert_eq!(a.egress_policy_json.as_deref(), Some(r#"{"outboundInternet":true}"#));
    assert!(s.get_vm("a").await.unwrap().unwrap().outbound_internet, "the policy mirrors outbound_internet");
    s.set_vm_state("a", VmState::Deleted, None).await.unwrap();
    assert_eq!(s.used_net_slots().await.unwrap(), [0], "a deleted VM's slot no longer counts");
    s.set_vm_net_slot("b", Some(3)).await.unwrap();
    assert_eq!(s.used_net_slots().await.unwrap(), [3]);
    s.set_vm_net_slot("b", None).await.unwrap();
    assert!(s.used_net_slots().await.unwrap().is_empty());
}

/// `allocate_net_slot` keeps a slot in range and not skipped, else moves to the lowest free one,
/// and reports exhaustion without losing the old slot.
pub async fn allocate_net_slot_keeps_a_valid_slot_and_replaces_a_skipped_one(f: &impl StoreFactory) {
    let s = f.fresh().await;
    for (i, id) in ["a", "b", "c"].into_iter().enumerate() {
        s.insert_vm(&vm(id, VmState::Stopped, i as i64)).await.unwrap();
    }
    let req = |capacity, skip: &[u32]| NetSlotRequest { capacity, skip: skip.to_vec() };
    assert_eq!(s.allocate_net_slot("a", &req(4, &[])).await.unwrap(), 0);
    assert_eq!(s.allocate_net_slot("a", &req(4, &[])).await.unwrap(), 0, "idempotent");
    assert_eq!(s.allocate_net_slot("b", &req(4, &[1])).await.unwrap(), 2, "skipped slots are not handed out");
    assert_eq!(s.allocate_net_slot("b", &req(4, &[2])).await.unwrap(), 1, "a skipped current slot is replaced");
    assert_eq!(s.used_net_slots().await.unwrap(), [0, 1], "the replaced slot is free again");
    s.set_vm_net_slot("c", Some(9)).await.unwrap();
    assert_eq!(s.allocate_net_slot("c", &req(4, &[])).await.unwrap(), 2, "a slot outside the pool is replaced");
    s.insert_vm(&vm("d", VmState::Stopped, 9)).await.unwrap();
    s.set_vm_net_slot("d", Some(3)).await.unwrap();
    let full = s.allocate_net_slot("d", &req(4, &[3])).await;
    assert!(matches!(full, Err(StoreError::QuotaExceeded(Quota::NetSlots { capacity: 4 }))), "{full:?}");
    assert_eq!(s.vm_network("d").await.unwrap().unwrap().net_slot, Some(3), "a failed allocation keeps the old slot");
}

/// `create_vm` writes the record, policy, secrets, links and the lowest free slot together.
pub async fn create_vm_writes_the_vm_policy_secrets_links_and_lowest_slot(f: &impl StoreFactory) {
    let s = f.fresh().await;
    s.insert_vm(&vm("old", VmState::Running, 1)).await.unwrap();
    s.set_vm_net_slot("old", Some(0)).await.unwrap();
    s.insert_image(&ImageRecord::new("img-1".into(), "i".into(), String::new(), 1)).await.unwrap();
    let mut new = new_vm("v", Some(8));
    new.record.image_id = Some("img-1".into());
    new.record.outbound_internet = true;
    new.egress_policy_json = Some(r#"{"outboundInternet":true}"#.into());
    new.secrets = Some(SealedSecrets { ciphertext: b"sealed".to_vec(), keys: vec!["TOKEN".into()] });
    new.links = vec![link("v", "weather", "old"), link("v", "maps", "old")];
    let created = s.create_vm(&new, &VmLimits { max_vms: 2 }).await.unwrap();
    assert_eq!(created.net_slot, Some(1), "the lowest free slot");
    let got = s.get_vm("v").await.unwrap().unwrap();
    assert_eq!(got.secret_env_ciphertext.as_deref(), Some(&b"sealed"[..]));
    assert_eq!(VmRecord { secret_env_ciphertext: None, updated_at: got.created_at, ..got.clone() }, new.record);
    assert_eq!(s.vm_secret_keys("v").await.unwrap(), ["TOKEN"]);
    assert_eq!(
        s.vm_network("v").await.unwrap(),
        Some(VmNetworkRecord { net_slot: Some(1), egress_policy_json: new.egress_policy_json.clone() })
    );
    let aliases: Vec<_> = s.list_peer_links("v").await.unwrap().into_iter().map(|l| l.alias).collect();
    assert_eq!(aliases, ["maps", "weather"]);
    let plain = s.create_vm(&new_vm("w", None), &NO_LIMIT).await.unwrap();
    assert_eq!(plain.net_slot, None, "no slot unless asked for");
    assert_eq!(s.vm_network("w").await.unwrap().unwrap().net_slot, None);
}

async fn assert_no_trace(s: &Arc<dyn Store>, id: &str) {
    assert_eq!(s.get_vm(id).await.unwrap(), None, "no VM row for {id}");
    assert!(s.list_peer_links(id).await.unwrap().is_empty(), "no links of {id}");
}

/// Over `max_vms` (tombstones not counted): `QuotaExceeded(Vms)`, and no row of the VM.
pub async fn create_vm_over_the_vm_quota_leaves_nothing_behind(f: &impl StoreFactory) {
    let s = f.fresh().await;
    let limits = VmLimits { max_vms: 2 };
    s.create_vm(&new_vm("a", Some(8)), &limits).await.unwrap();
    s.create_vm(&new_vm("b", Some(8)), &limits).await.unwrap();
    let mut third = new_vm("c", Some(8));
    third.links = vec![link("c", "x", "a")];
    third.secrets = Some(SealedSecrets { ciphertext: b"s".to_vec(), keys: vec!["K".into()] });
    let refused = s.create_vm(&third, &limits).await;
    assert!(matches!(refused, Err(StoreError::QuotaExceeded(Quota::Vms { max: 2 }))), "{refused:?}");
    assert_no_trace(&s, "c").await;
    assert_eq!(s.used_net_slots().await.unwrap(), [0, 1]);
    s.finish_vm_delete("a").await.unwrap();
    assert_eq!(s.create_vm(&third, &limits).await.unwrap().net_slot, Some(0), "a tombstone frees quota and slot");
}

/// No free slot: `QuotaExceeded(NetSlots)`, and no row of the VM.
pub async fn create_vm_without_a_free_slot_leaves_nothing_behind(f: &impl StoreFactory) {
    let s = f.fresh().await;
    s.create_vm(&new_vm("a", Some(2)), &NO_LIMIT).await.unwrap();
    let mut b = new_vm("b", Some(2));
    b.net.as_mut().unwrap().skip = vec![1];
    let refused = s.create_vm(&b, &NO_LIMIT).await;
    assert!(matches!(refused, Err(StoreError::QuotaExceeded(Quota::NetSlots { capacity: 2 }))), "{refused:?}");
    assert_no_trace(&s, "b").await;
    assert_eq!(s.count_live_vms().await.unwrap(), 1);
}

/// An image that does not exist is `NotFound`, a taken id `Conflict`; neither writes anything.
pub async fn create_vm_with_a_missing_image_or_taken_id_leaves_nothing_behind(f: &impl StoreFactory) {
    let s = f.fresh().await;
    let mut a = new_vm("a", Some(4));
    a.record.image_id = Some("img-gone".into());
    a.links = vec![link("a", "x", "p")];
    assert!(is_not_found(s.create_vm(&a, &NO_LIMIT).await));
    assert_no_trace(&s, "a").await;
    assert!(s.used_net_slots().await.unwrap().is_empty());
    s.create_vm(&new_vm("b", Some(4)), &NO_LIMIT).await.unwrap();
    let mut again = new_vm("b", Some(4));
    again.links = vec![link("b", "x", "p")];
    again.record.cpu = 7;
    assert!(matches!(s.create_vm(&again, &NO_LIMIT).await, Err(StoreError::Conflict { .. })));
    assert_eq!(s.get_vm("b").await.unwrap().unwrap().cpu, 1, "the first VM is untouched");
    assert!(s.list_peer_links("b").await.unwrap().is_empty());
    assert_eq!(s.used_net_slots().await.unwrap(), [0]);
}

/// `finish_vm_delete` records DELETED and drops handle, slot, secrets and links; twice is fine.
pub async fn finish_vm_delete_tombstones_and_frees_everything_once(f: &impl StoreFactory) {
    let s = f.fresh().await;
    let mut new = new_vm("a", Some(4));
    new.secrets = Some(SealedSecrets { ciphertext: b"s".to_vec(), keys: vec!["K".into()] });
    new.links = vec![link("a", "x", "p")];
    s.create_vm(&new, &NO_LIMIT).await.unwrap();
    s.create_vm(&new_vm("p", Some(4)), &NO_LIMIT).await.unwrap();
    s.upsert_peer_link(&link("p", "back", "a")).await.unwrap();
    s.set_vm_handle("a", Some("{}")).await.unwrap();
    s.set_vm_state("a", VmState::Deleting, Some("asked")).await.unwrap();
    s.finish_vm_delete("a").await.unwrap();
    let a = s.get_vm("a").await.unwrap().unwrap();
    assert_eq!((a.state, a.state_reason, a.handle_json, a.secret_env_ciphertext), (VmState::Deleted, None, None, None));
    assert!(s.vm_secret_keys("a").await.unwrap().is_empty());
    assert_eq!(s.vm_network("a").await.unwrap().unwrap().net_slot, None);
    assert!(s.list_peer_links("a").await.unwrap().is_empty());
    assert_eq!(s.list_peer_links("p").await.unwrap().len(), 1, "links to the VM as a provider stay");
    assert_eq!(s.used_net_slots().await.unwrap(), [1]);
    s.finish_vm_delete("a").await.unwrap();
    assert_eq!(s.count_live_vms().await.unwrap(), 1);
}

/// Exec logs: newest first, `limit` honoured, `has_more` exact, per VM.
pub async fn exec_logs_are_newest_first_with_has_more(f: &impl StoreFactory) {
    let s = f.fresh().await;
    for i in 0..3 {
        s.insert_exec_log(&ExecLogRecord {
            id: format!("e{i}"),
            vm_id: "v".into(),
            kind: "exec".into(),
            exec_id: Some(format!("x{i}")),
            input: serde_json::json!({"cmd": "true", "envKeys": ["A"]}),
            exit_code: Some(i),
            duration_ms: 3,
            output_preview: "out".into(),
            created_at: 1000 + i as i64,
        })
        .await
        .unwrap();
    }
    let (rows, more) = s.list_exec_logs("v", 2).await.unwrap();
    assert_eq!(rows.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["e2", "e1"]);
    assert!(more);
    assert_eq!(rows[0].input, serde_json::json!({"cmd": "true", "envKeys": ["A"]}));
    assert_eq!((rows[0].exit_code, rows[0].exec_id.as_deref()), (Some(2), Some("x2")));
    let (rows, more) = s.list_exec_logs("v", 3).await.unwrap();
    assert_eq!((rows.len(), more), (3, false));
    assert_eq!(s.list_exec_logs("other", 5).await.unwrap(), (vec![], false));
}

/// API keys: expired and revoked ones are not active; revoke counts what it revoked.
pub async fn revoked_and_expired_keys_are_not_active(f: &impl StoreFactory) {
    let s = f.fresh().await;
    let key = |id: &str, expires_at| ApiKeyRecord {
        id: id.into(),
        name: id.into(),
        prefix: "rds_x".into(),
        hash: format!("h{id}"),
        created_at: 1,
        expires_at,
        revoked_at: None,
        last_used_at: None,
    };
    s.insert_api_key(&key("live", None)).await.unwrap();
    s.insert_api_key(&key("later", Some(500))).await.unwrap();
    s.insert_api_key(&key("old", Some(50))).await.unwrap();
    let active: Vec<_> = s.active_api_keys(100).await.unwrap().into_iter().map(|k| k.id).collect();
    assert_eq!(active.len(), 2);
    assert!(active.contains(&"live".to_string()) && active.contains(&"later".to_string()));
    assert!(matches!(s.insert_api_key(&key("live", None)).await, Err(StoreError::Conflict { .. })));
    assert_eq!(s.revoke_all_api_keys(100).await.unwrap(), 3);
    assert!(s.active_api_keys(100).await.unwrap().is_empty());
    assert_eq!(s.revoke_all_api_keys(101).await.unwrap(), 0);
}

/// API keys one by one: listed with revoked ones, revoked once, their last use recorded.
pub async fn keys_are_listed_revoked_one_by_one_and_touched(f: &impl StoreFactory) {
    let s = f.fresh().await;
    for (id, created_at) in [("a", 1), ("b", 2)] {
        let k = ApiKeyRecord {
            id: id.into(),
            name: format!("key {id}"),
            prefix: "rds_y".into(),
            hash: format!("hash-{id}"),
            created_at,
            expires_at: None,
            revoked_at: None,
            last_used_at: None,
        };
        s.insert_api_key(&k).await.unwrap();
    }
    s.touch_api_key("a", 40).await.unwrap();
    s.revoke_api_key("b", 50).await.unwrap();
    assert!(matches!(s.revoke_api_key("b", 60).await, Err(StoreError::NotFound(_))));
    assert!(matches!(s.revoke_api_key("nope", 60).await, Err(StoreError::NotFound(_))));
    let all = s.list_api_keys().await.unwrap();
    let seen: Vec<_> = all.iter().map(|k| (k.id.as_str(), k.revoked_at, k.last_used_at)).collect();
    assert_eq!(seen, [("b", Some(50), None), ("a", None, Some(40))]);
    let active: Vec<_> = s.active_api_keys(100).await.unwrap().into_iter().map(|k| k.id).collect();
    assert_eq!(active, ["a"]);
}

/// Links: upsert replaces, sync is recorded, list is by alias, delete says whether it removed.
pub async fn peer_links_upsert_sync_list_and_delete(f: &impl StoreFactory) {
    let s = f.fresh().await;
    let l = link("c", "weather", "p");
    s.upsert_peer_link(&l).await.unwrap();
    s.upsert_peer_link(&PeerLinkRecord { source_mode: "mirror".into(), ..l.clone() }).await.unwrap();
    s.upsert_peer_link(&link("c", "alpha", "p")).await.unwrap();
    s.set_peer_sync("c", "weather", "synced", Some("ok"), Some("{}")).await.unwrap();
    s.set_peer_sync("c", "nope", "synced", None, None).await.unwrap();
    let got = s.get_peer_link("c", "weather").await.unwrap().unwrap();
    assert_eq!((got.source_mode.as_str(), got.sync_status.as_str()), ("mirror", "synced"));
    assert_eq!((got.sync_message.as_deref(), got.manifest_json.as_deref()), (Some("ok"), Some("{}")));
    assert!(got.synced_at.is_some());
    let aliases: Vec<_> = s.list_peer_links("c").await.unwrap().into_iter().map(|l| l.alias).collect();
    assert_eq!(aliases, ["alpha", "weather"]);
    assert_eq!(s.get_peer_link("c", "nope").await.unwrap(), None);
    assert!(s.delete_peer_link("c", "weather").await.unwrap());
    assert!(!s.delete_peer_link("c", "weather").await.unwrap());
    s.delete_peer_links_of("c").await.unwrap();
    assert!(s.list_peer_links("c").await.unwrap().is_empty());
}

/// `put_peer_link` refuses a new link past the limit but still replaces existing ones.
pub async fn put_peer_link_limits_only_new_links(f: &impl StoreFactory) {
    let s = f.fresh().await;
    s.put_peer_link(&link("c", "a", "p"), 2).await.unwrap();
    s.put_peer_link(&link("c", "b", "p"), 2).await.unwrap();
    let refused = s.put_peer_link(&link("c", "z", "p"), 2).await;
    assert!(matches!(refused, Err(StoreError::QuotaExceeded(Quota::PeerLinks { max: 2, .. }))), "{refused:?}");
    assert_eq!(s.get_peer_link("c", "z").await.unwrap(), None);
    s.put_peer_link(&link("c", "a", "q"), 2).await.unwrap();
    assert_eq!(s.get_peer_link("c", "a").await.unwrap().unwrap().provider_vm_id, "q");
    s.put_peer_link(&link("other", "z", "p"), 2).await.unwrap();
}

/// Bridge calls: newest first, filtered by either end.
pub async fn peer_calls_are_listed_for_consumer_and_provider(f: &impl StoreFactory) {
    let s = f.fresh().await;
    for (i, consumer) in ["c1", "c2", "c1"].iter().enumerate() {
        s.insert_peer_call(&PeerCallRecord {
            id: format!("call-{i}"),
            consumer_vm_id: consumer.to_string(),
            provider_vm_id: Some("p".into()),
            alias: "a".into(),
            export_name: "f".into(),
            status: 200,
            code: "ok".into(),
            duration_ms: 3,
            created_at: i as i64,
        })
        .await
        .unwrap();
    }
    let listed = |v: Vec<PeerCallRecord>| v.into_iter().map(|c| c.id).collect::<Vec<_>>();
    assert_eq!(listed(s.list_peer_calls(Some("c1"), 10).await.unwrap()), ["call-2", "call-0"]);
    assert_eq!(s.list_peer_calls(Some("p"), 10).await.unwrap().len(), 3);
    assert_eq!(listed(s.list_peer_calls(None, 2).await.unwrap()), ["call-2", "call-1"]);
}

/// Secrets: sealed blob and key names together; clearing removes both.
pub async fn secrets_keep_key_names_beside_the_sealed_blob(f: &impl StoreFactory) {
    let s = f.fresh().await;
    s.insert_vm(&vm("a", VmState::Running, 1)).await.unwrap();
    s.set_vm_secrets("a", Some(b"sealed"), &["TOKEN".into(), "B".into()]).await.unwrap();
    assert_eq!(s.vm_secret_keys("a").await.unwrap(), ["TOKEN", "B"]);
    assert_eq!(s.get_vm("a").await.unwrap().unwrap().secret_env_ciphertext.as_deref(), Some(&b"sealed"[..]));
    s.set_vm_secrets("a", None, &[]).await.unwrap();
    assert!(s.vm_secret_keys("a").await.unwrap().is_empty());
    assert_eq!(s.get_vm("a").await.unwrap().unwrap().secret_env_ciphertext, None);
}

/// Images: parts and manifest recorded, list oldest first, missing images `NotFound`.
pub async fn images_record_parts_and_manifest(f: &impl StoreFactory) {
    let s = f.fresh().await;
    s.insert_image(&ImageRecord::new("img-b".into(), "b".into(), "d".into(), 2)).await.unwrap();
    s.insert_image(&ImageRecord::new("img-a".into(), "a".into(), String::new(), 1)).await.unwrap();
    assert!(matches!(
        s.insert_image(&ImageRecord::new("img-a".into(), "x".into(), String::new(), 3)).await,
        Err(StoreError::Conflict { .. })
    ));
    s.set_image_part("img-a", ImagePart::Rootfs, 4096, 10).await.unwrap();
    s.set_image_part("img-a", ImagePart::Kernel, 64, 11).await.unwrap();
    s.set_image_manifest("img-a", Some("{}")).await.unwrap();
    let a = s.get_image("img-a").await.unwrap().unwrap();
    assert_eq!((a.rootfs_bytes, a.rootfs_uploaded_at), (Some(4096), Some(10)));
    assert_eq!((a.kernel_bytes, a.kernel_uploaded_at, a.initrd_bytes), (Some(64), Some(11), None));
    assert_eq!(a.manifest_json.as_deref(), Some("{}"));
    let listed: Vec<_> = s.list_images().await.unwrap().into_iter().map(|i| i.id).collect();
    assert_eq!(listed, ["img-a", "img-b"]);
    assert!(is_not_found(s.set_image_part("img-x", ImagePart::Initrd, 1, 1).await));
    assert!(is_not_found(s.set_image_manifest("img-x", None).await));
    assert_eq!(s.get_image("img-x").await.unwrap(), None);
}

/// `delete_image` refuses while a live VM uses the image, then removes it and the default
/// setting naming it (not one naming another image).
pub async fn delete_image_refuses_while_in_use_and_clears_the_default(f: &impl StoreFactory) {
    let s = f.fresh().await;
    s.insert_image(&ImageRecord::new("img-1".into(), "a".into(), String::new(), 1)).await.unwrap();
    s.insert_image(&ImageRecord::new("img-2".into(), "b".into(), String::new(), 1)).await.unwrap();
    let mut a = vm("a", VmState::Stopped, 1);
    a.image_id = Some("img-1".into());
    s.insert_vm(&a).await.unwrap();
    s.insert_vm(&vm("b", VmState::Running, 2)).await.unwrap();
    assert_eq!(s.count_live_vms_with_image("img-1").await.unwrap(), 1);
    s.set_setting("default", Some("img-1")).await.unwrap();
    let refused = s.delete_image("img-1", "default").await;
    assert!(matches!(refused, Err(StoreError::InUse { users: 1, .. })), "{refused:?}");
    assert!(s.get_image("img-1").await.unwrap().is_some());
    s.set_vm_state("a", VmState::Deleted, None).await.unwrap();
    assert_eq!(s.count_live_vms_with_image("img-1").await.unwrap(), 0);
    assert!(s.delete_image("img-2", "default").await.unwrap());
    assert_eq!(s.get_setting("default").await.unwrap().as_deref(), Some("img-1"), "another image's default stays");
    assert!(s.delete_image("img-1", "default").await.unwrap());
    assert_eq!(s.get_setting("default").await.unwrap(), None);
    assert!(!s.delete_image("img-1", "default").await.unwrap());
}

/// Settings: upsert, remove, and `init_setting` keeps the first value.
pub async fn settings_upsert_remove_and_init_once(f: &impl StoreFactory) {
    let s = f.fresh().await;
    assert_eq!(s.get_setting("k").await.unwrap(), None);
    s.set_setting("k", Some("1")).await.unwrap();
    s.set_setting("k", Some("2")).await.unwrap();
    assert_eq!(s.get_setting("k").await.unwrap().as_deref(), Some("2"));
    s.set_setting("k", None).await.unwrap();
    assert_eq!(s.get_setting("k").await.unwrap(), None);
    s.set_setting("k", None).await.unwrap();
    assert_eq!(s.init_setting("id", "first").await.unwrap(), "first");
    assert_eq!(s.init_setting("id", "second").await.unwrap(), "first");
    assert_eq!(s.get_setting("id").await.unwrap().as_deref(), Some("first"));
}

/// Events: newest first, limit honoured, meta kept.
pub async fn events_are_newest_first_and_keep_meta(f: &impl StoreFactory) {
    let s = f.fresh().await;
    for kind in ["vm.created", "vm.started", "vm.stopped"] {
        s.insert_event(&NewEvent {
            kind: kind.into(),
            entity_type: Some("vm".into()),
            entity_id: Some("a".into()),
            message: format!("{kind} happened"),
            meta: Some(serde_json::json!({"cpu": 1})),
        })
        .await
        .unwrap();
    }
    let ev = s.list_events(2).await.unwrap();
    assert_eq!(ev.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(), ["vm.stopped", "vm.started"]);
    assert!(ev[0].id > ev[1].id);
    assert_eq!(ev[0].meta, Some(serde_json::json!({"cpu": 1})));
    assert_eq!((ev[0].entity_id.as_deref(), ev[0].message.as_str()), (Some("a"), "vm.stopped happened"));
}

/// Creates from two stores over one database at once, `n` in all, `create(i)` each.
async fn create_concurrently(
    f: &impl StoreFactory,
    n: usize,
    limits: VmLimits,
    capacity: u32,
) -> (Arc<dyn Store>, Vec<Result<Option<u32>, StoreError>>) {
    let (one, two) = f.pair().await;
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let store = if i % 2 == 0 { one.clone() } else { two.clone() };
            tokio::spawn(async move {
                let mut new = new_vm(&format!("vm-{i:03}"), Some(capacity));
                new.links = vec![link(&format!("vm-{i:03}"), "p", "provider")];
                store.create_vm(&new, &limits).await.map(|c| c.net_slot)
            })
        })
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.expect("a create task panicked"));
    }
    (one, results)
}

/// `n` concurrent creates split across two stores: exactly `max_vms` succeed, the rest are
/// refused with the VM quota, and the refused leave no rows.
pub async fn concurrent_creates_on_two_stores_never_exceed_the_vm_quota(f: &impl StoreFactory) {
    let (store, results) = create_concurrently(f, 24, VmLimits { max_vms: 7 }, 64).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 7, "{results:?}");
    for r in &results {
        assert!(matches!(r, Ok(_) | Err(StoreError::QuotaExceeded(Quota::Vms { max: 7 }))), "{r:?}");
    }
    assert_eq!(store.count_live_vms().await.unwrap(), 7);
    let slots: HashSet<_> = results.iter().filter_map(|r| r.as_ref().ok().copied().flatten()).collect();
    assert_eq!(slots.len(), 7, "every created VM has its own slot");
    for (i, r) in results.iter().enumerate() {
        let id = format!("vm-{i:03}");
        if r.is_err() {
            assert_no_trace(&store, &id).await;
        } else {
            assert_eq!(store.list_peer_links(&id).await.unwrap().len(), 1);
        }
    }
}

/// `n` concurrent creates split across two stores with fewer slots than VMs: every slot is
/// handed out once, the rest are refused for slots and leave no rows.
pub async fn concurrent_creates_on_two_stores_never_share_a_slot(f: &impl StoreFactory) {
    let (store, results) = create_concurrently(f, 20, VmLimits { max_vms: 100 }, 6).await;
    let mut slots: Vec<u32> = results.iter().filter_map(|r| r.as_ref().ok().copied().flatten()).collect();
    slots.sort_unstable();
    assert_eq!(slots, [0, 1, 2, 3, 4, 5], "{results:?}");
    for r in &results {
        assert!(matches!(r, Ok(_) | Err(StoreError::QuotaExceeded(Quota::NetSlots { capacity: 6 }))), "{r:?}");
    }
    assert_eq!(store.count_live_vms().await.unwrap(), 6);
    assert_eq!(store.used_net_slots().await.unwrap(), [0, 1, 2, 3, 4, 5]);
}

/// VMs created without slots, then allocated concurrently from two stores: no slot twice.
pub async fn concurrent_slot_allocations_on_two_stores_never_share_a_slot(f: &impl StoreFactory) {
    let (one, two) = f.pair().await;
    for i in 0..16 {
        one.create_vm(&new_vm(&format!("vm-{i:02}"), None), &NO_LIMIT).await.unwrap();
    }
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let store = if i % 2 == 0 { one.clone() } else { two.clone() };
            tokio::spawn(async move {
                store.allocate_net_slot(&format!("vm-{i:02}"), &NetSlotRequest { capacity: 10, skip: vec![] }).await
            })
        })
        .collect();
    let mut got = Vec::new();
    for t in tasks {
        match t.await.expect("an allocation task panicked") {
            Ok(slot) => got.push(slot),
            Err(StoreError::QuotaExceeded(Quota::NetSlots { capacity: 10 })) => {}
            Err(e) => panic!("unexpected allocation error: {e:?}"),
        }
    }
    got.sort_unstable();
    assert_eq!(got, (0..10).collect::<Vec<_>>());
    assert_eq!(two.used_net_slots().await.unwrap(), got);
}

/// `init_setting` from two stores at once: both see the same single value.
pub async fn concurrent_init_setting_on_two_stores_agrees(f: &impl StoreFactory) {
    let (one, two) = f.pair().await;
    let (a, b) = tokio::join!(
        tokio::spawn(async move { one.init_setting("installationId", "one").await }),
        tokio::spawn(async move { two.init_setting("installationId", "two").await }),
    );
    let (a, b) = (a.unwrap().unwrap(), b.unwrap().unwrap());
    assert_eq!(a, b);
    assert!(a == "one" || a == "two");
}

fn snapshot(id: &str, created_at: i64) -> SnapshotRecord {
    SnapshotRecord {
        id: id.into(),
        kind: "user_overlay".into(),
        content: "disk".into(),
        state: SnapshotState::Creating,
        internal: false,
        runtime: "sandbox".into(),
        source_vm_id: Some("vm-1".into()),
        image_id: Some("img-1".into()),
        cpu: 2,
        mem_mb: 512,
        disk_mb: 2048,
        bytes: 0,
        created_at,
    }
}

/// A snapshot is written `creating`, becomes `ready` with its content and size, is listed oldest
/// first, and is gone once deleted; a taken id is a conflict.
pub async fn snapshots_are_created_finished_listed_and_deleted(factory: &dyn StoreFactory) {
    let store = factory.fresh().await;
    store.insert_snapshot(&snapshot("snap-b", 20)).await.unwrap();
    store
        .insert_snapshot(&SnapshotRecord { internal: true, kind: "image_seed".into(), ..snapshot("seed-a", 10) })
        .await
        .unwrap();
    assert!(matches!(store.insert_snapshot(&snapshot("snap-b", 30)).await, Err(StoreError::Conflict { .. })));
    assert_eq!(store.get_snapshot("snap-b").await.unwrap(), Some(snapshot("snap-b", 20)));
    store.finish_snapshot("snap-b", "memory", 4096).await.unwrap();
    let ready = store.get_snapshot("snap-b").await.unwrap().unwrap();
    assert_eq!((ready.state, ready.content.as_str(), ready.bytes), (SnapshotState::Ready, "memory", 4096));
    let ids: Vec<String> = store.list_snapshots().await.unwrap().into_iter().map(|s| s.id).collect();
    assert_eq!(ids, ["seed-a", "snap-b"]);
    assert!(store.list_snapshots().await.unwrap()[0].internal);
    assert!(store.delete_snapshot("snap-b").await.unwrap());
    assert!(!store.delete_snapshot("snap-b").await.unwrap());
    assert_eq!(store.get_snapshot("snap-b").await.unwrap(), None);
    assert!(matches!(store.finish_snapshot("snap-b", "disk", 1).await, Err(StoreError::NotFound(_))));
}

/// A VM keeps the snapshot it came from and how it was last provisioned.
pub async fn provision_mode_and_snapshot_origin_round_trip(factory: &dyn StoreFactory) {
    let store = factory.fresh().await;
    let record = VmRecord { snapshot_id: Some("snap-1".into()), ..vm("vm-1", VmState::Creating, 1) };
    store.insert_vm(&record).await.unwrap();
    assert_eq!(store.get_vm("vm-1").await.unwrap().unwrap().provision_mode, None);
    store.set_vm_provision("vm-1", "snapshot", None).await.unwrap();
    let got = store.get_vm("vm-1").await.unwrap().unwrap();
    assert_eq!((got.provision_mode.as_deref(), got.snapshot_id.as_deref()), (Some("snapshot"), Some("snap-1")));
    store.set_vm_provision("vm-1", "boot", Some("seed-img")).await.unwrap();
    let got = store.get_vm("vm-1").await.unwrap().unwrap();
    assert_eq!((got.provision_mode.as_deref(), got.snapshot_id.as_deref()), (Some("boot"), Some("seed-img")));
    assert!(matches!(store.set_vm_provision("nope", "boot", None).await, Err(StoreError::NotFound(_))));
}

/// Warm-pool members do not count toward `MAX_VMS`; a claim takes the oldest RUNNING member of
/// the right runtime, sizes and image, counts it from then on and gives it the claim's policy,
/// secrets and links in the same step; no match is `None`, a full quota a refusal.
pub async fn pool_members_sit_outside_the_quota_until_claimed_whole(f: &dyn StoreFactory) {
    let s = f.fresh().await;
    let limits = VmLimits { max_vms: 1 };
    for (id, created, state) in
        [("p-new", 3, VmState::Running), ("p-old", 2, VmState::Running), ("p-booting", 1, VmState::Creating)]
    {
        let mut new = new_vm(id, None);
        new.record = VmRecord { pool: true, ..vm(id, state, created) };
        s.create_vm(&new, &limits).await.unwrap();
    }
    assert_eq!(s.count_live_vms().await.unwrap(), 0, "members are outside the quota");
    let claim = PoolClaim {
        runtime: "sandbox".into(),
        cpu: 1,
        mem_mb: 256,
        disk_mb: 1024,
        image_id: None,
        outbound_internet: true,
        allow_ips_json: Some(r#"["10.0.0.0/8"]"#.into()),
        egress_policy_json: Some(r#"{"outboundInternet":true}"#.into()),
        secrets: Some(SealedSecrets { ciphertext: b"sealed".to_vec(), keys: vec!["TOKEN".into()] }),
        links: vec![link("ignored", "weather", "p-new")],
    };
    let wrong_size = PoolClaim { mem_mb: 512, ..claim.clone() };
    assert_eq!(s.claim_pool_vm(&wrong_size, &limits).await.unwrap(), None);
    assert_eq!(s.claim_pool_vm(&claim, &limits).await.unwrap().as_deref(), Some("p-old"), "the oldest RUNNING one");
    let got = s.get_vm("p-old").await.unwrap().unwrap();
    assert!(!got.pool && got.outbound_internet, "{got:?}");
    assert_eq!(got.allow_ips_json, claim.allow_ips_json);
    assert_eq!(s.vm_network("p-old").await.unwrap().unwrap().egress_policy_json, claim.egress_policy_json);
    assert_eq!(s.vm_secret_keys("p-old").await.unwrap(), ["TOKEN"]);
    let links = s.list_peer_links("p-old").await.unwrap();
    assert_eq!((links.len(), links[0].consumer_vm_id.as_str()), (1, "p-old"));
    assert_eq!(s.count_live_vms().await.unwrap(), 1);
    assert!(matches!(s.claim_pool_vm(&claim, &limits).await, Err(StoreError::QuotaExceeded(Quota::Vms { max: 1 }))));
    assert!(s.get_vm("p-new").await.unwrap().unwrap().pool, "a refused claim takes nothing");
}
