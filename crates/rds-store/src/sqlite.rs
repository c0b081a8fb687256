//! [`Store`] on a SQLite file: WAL journal, busy timeout, one connection behind a mutex, used
//! only from tokio's blocking pool.
//!
//! Every multi-row change runs in a `BEGIN IMMEDIATE` transaction: it takes the database's write
//! lock before reading what it checks (quotas, free slots), so two managers sharing the file
//! serialise on it, and the busy timeout makes the second wait rather than fail.

use std::collections::HashSet;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{params, Connection, ErrorCode, OptionalExtension, Row, Transaction, TransactionBehavior};

use crate::{
    migrations, now_ms, ApiKeyRecord, CreatedVm, EventRecord, ExecLogRecord, ImagePart, ImageRecord, NetSlotRequest,
    NewEvent, NewVm, PeerCallRecord, PeerLinkRecord, PoolClaim, Quota, SnapshotRecord, SnapshotState, Store,
    StoreError, StoreResult, VmLimits, VmNetworkRecord, VmRecord, VmState,
};

/// How long a writer waits for another connection's (or manager's) write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// SQLite implementation of [`Store`].
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
}

/// A failure inside a blocking SQLite closure: a raw SQLite error (turned into a
/// [`StoreError::Backend`] or `Conflict` naming the operation) or an already typed one.
pub(crate) enum Fail {
    Db(rusqlite::Error),
    Store(StoreError),
}

impl From<rusqlite::Error> for Fail {
    fn from(e: rusqlite::Error) -> Self {
        Fail::Db(e)
    }
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Self {
        Fail::Store(e)
    }
}

impl Fail {
    /// The public error, naming `op` as what was being done.
    pub(crate) fn into_store(self, op: &'static str) -> StoreError {
        match self {
            Fail::Store(e) => e,
            Fail::Db(e) => {
                let constraint =
                    matches!(&e, rusqlite::Error::SqliteFailure(f, _) if f.code == ErrorCode::ConstraintViolation);
                if constraint {
                    StoreError::Conflict { op, what: "a record with the same key".into(), source: Some(Box::new(e)) }
                } else {
                    StoreError::Backend { op, source: Box::new(e) }
                }
            }
        }
    }
}

type Res<T> = Result<T, Fail>;

const VM_COLUMNS: &str = "id, state, state_reason, cpu, mem_mb, runtime, image_id, handle_json, \
     outbound_internet, allow_ips_json, secret_env_ciphertext, created_at, updated_at, disk_mb, provision_mode, \
     snapshot_id, pool";

const SNAPSHOT_COLUMNS: &str = "id, kind, content, state, internal, runtime, source_vm_id, image_id, cpu, mem_mb, \
     disk_mb, bytes, created_at";

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and migrates it to the latest schema.
    /// The database's directory is made 0700 and the database files 0600 (fixed if they exist):
    /// they hold API key hashes, sealed secrets and every VM's record. Blocking: async callers use
    /// [`crate::open`].
    pub fn open(path: &Path) -> StoreResult<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .and_then(|()| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)))
                .map_err(|source| StoreError::Dir { path: dir.display().to_string(), source })?;
        }
        // Created 0600 before SQLite opens it: SQLite gives its -wal and -shm files the same mode.
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(|source| StoreError::File { path: path.display().to_string(), source })?;
        let conn = Connection::open(path).map_err(|e| Fail::from(e).into_store("open"))?;
        let store = Self::setup(conn)?;
        for suffix in ["", "-wal", "-shm"] {
            let mut file = path.as_os_str().to_owned();
            file.push(suffix);
            match std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(StoreError::File { path: Path::new(&file).display().to_string(), source: e })
                }
                _ => {}
            }
        }
        Ok(store)
    }

    /// An in-memory database, for tests.
    pub fn open_in_memory() -> StoreResult<Self> {
        let conn = Connection::open_in_memory().map_err(|e| Fail::from(e).into_store("open"))?;
        Self::setup(conn)
    }

    fn setup(mut conn: Connection) -> StoreResult<Self> {
        (|| -> Res<()> {
            conn.busy_timeout(BUSY_TIMEOUT)?;
            // WAL lets readers (another manager, an admin tool) proceed while one writes.
            conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))?;
            conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;")?;
            Ok(())
        })()
        .map_err(|e| e.into_store("open"))?;
        migrations::migrate(&mut conn).map_err(|e| e.into_store("migrate"))?;
        Ok(SqliteStore { conn: Arc::new(Mutex::new(conn)) })
    }

    /// Runs `f` on the connection on a blocking thread; `op` names it in errors.
    async fn run<T, F>(&self, op: &'static str, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Res<T> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock cannot leave SQLite inconsistent: an open
            // transaction is rolled back when its guard drops.
            let mut conn = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut conn).map_err(|e| e.into_store(op))
        })
        .await
        .map_err(|e| StoreError::Backend { op, source: Box::new(e) })?
    }

    /// Runs `f` in a `BEGIN IMMEDIATE` transaction, committed only if `f` succeeds.
    async fn write<T, F>(&self, op: &'static str, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> Res<T> + Send + 'static,
    {
        self.run(op, move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let value = f(&tx)?;
            tx.commit()?;
            Ok(value)
        })
        .await
    }

    /// The raw connection, for SQLite-specific tests.
    #[cfg(test)]
    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn vm_from_row(r: &Row<'_>) -> rusqlite::Result<(VmRecord, String)> {
    let state: String = r.get(1)?;
    Ok((
        VmRecord {
            id: r.get(0)?,
            state: VmState::Deleted, // replaced by the caller after parsing `state`
            state_reason: r.get(2)?,
            cpu: r.get(3)?,
            mem_mb: r.get(4)?,
            runtime: r.get(5)?,
            image_id: r.get(6)?,
            handle_json: r.get(7)?,
            outbound_internet: r.get(8)?,
            allow_ips_json: r.get(9)?,
            secret_env_ciphertext: r.get(10)?,
            created_at: r.get(11)?,
            updated_at: r.get(12)?,
            disk_mb: r.get(13)?,
            provision_mode: r.get(14)?,
            snapshot_id: r.get(15)?,
            pool: r.get(16)?,
        },
        state,
    ))
}

fn snapshot_from_row(r: &Row<'_>) -> rusqlite::Result<(SnapshotRecord, String)> {
    let state: String = r.get(3)?;
    Ok((
        SnapshotRecord {
            id: r.get(0)?,
            kind: r.get(1)?,
            content: r.get(2)?,
            state: SnapshotState::Creating, // replaced by the caller after parsing `state`
            internal: r.get(4)?,
            runtime: r.get(5)?,
            source_vm_id: r.get(6)?,
            image_id: r.get(7)?,
            cpu: r.get(8)?,
            mem_mb: r.get(9)?,
            disk_mb: r.get(10)?,
            bytes: r.get::<_, i64>(11)? as u64,
            created_at: r.get(12)?,
        },
        state,
    ))
}

fn finish_snapshot((mut snap, state): (SnapshotRecord, String)) -> Res<SnapshotRecord> {
    snap.state = SnapshotState::parse(&state)?;
    Ok(snap)
}

fn finish_vm((mut vm, state): (VmRecord, String)) -> Res<VmRecord> {
    vm.state = VmState::parse(&state)?;
    Ok(vm)
}

fn json_text(v: &Option<serde_json::Value>) -> Option<String> {
    v.as_ref().map(|v| v.to_string())
}

fn parse_json_text(s: Option<String>) -> Option<serde_json::Value> {
    s.and_then(|s| serde_json::from_str(&s).ok())
}

fn vm_not_found(id: &str) -> Fail {
    Fail::Store(StoreError::NotFound(format!("VM {id}")))
}

/// Errs with `NotFound` when an UPDATE by id touched nothing.
const API_KEY_COLUMNS: &str = "id, name, prefix, hash, created_at, expires_at, revoked_at, last_used_at";

fn api_key_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ApiKeyRecord> {
    Ok(ApiKeyRecord {
        id: r.get(0)?,
        name: r.get(1)?,
        prefix: r.get(2)?,
        hash: r.get(3)?,
        created_at: r.get(4)?,
        expires_at: r.get(5)?,
        revoked_at: r.get(6)?,
        last_used_at: r.get(7)?,
    })
}

fn touched(n: usize, what: impl FnOnce() -> Fail) -> Res<()> {
    if n == 0 {
        Err(what())
    } else {
        Ok(())
    }
}

fn insert_vm_row(conn: &Connection, vm: &VmRecord) -> Res<()> {
    conn.execute(
        &format!("INSERT INTO vms ({VM_COLUMNS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17)"),
        params![
            vm.id,
            vm.state.as_str(),
            vm.state_reason,
            vm.cpu,
            vm.mem_mb,
            vm.runtime,
            vm.image_id,
            vm.handle_json,
            vm.outbound_internet,
            vm.allow_ips_json,
            vm.secret_env_ciphertext,
            vm.created_at,
            vm.updated_at,
            vm.disk_mb,
            vm.provision_mode,
            vm.snapshot_id,
            vm.pool
        ],
    )
    .map_err(|e| match e {
        rusqlite::Error::SqliteFailure(f, _) if f.code == ErrorCode::ConstraintViolation => {
            Fail::Store(StoreError::Conflict {
                op: "insert_vm",
                what: format!("VM id {}", vm.id),
                source: Some(Box::new(e)),
            })
        }
        e => Fail::Db(e),
    })?;
    Ok(())
}

fn count_live(conn: &Connection) -> Res<u64> {
    let n: i64 = conn.query_row("SELECT COUNT(*) FROM vms WHERE state <> 'DELETED' AND pool = 0", [], |r| r.get(0))?;
    Ok(n as u64)
}

/// Slots held by any row. Tombstones left holding one by an older rds give it up first: a
/// DELETED VM's slot is free.
fn held_slots(conn: &Connection) -> Res<HashSet<u32>> {
    conn.execute("UPDATE vms SET net_slot = NULL WHERE state = 'DELETED' AND net_slot IS NOT NULL", [])?;
    let mut stmt = conn.prepare_cached("SELECT net_slot FROM vms WHERE net_slot IS NOT NULL")?;
    let slots = stmt.query_map([], |r| r.get(0))?.collect::<Result<HashSet<u32>, _>>()?;
    Ok(slots)
}

/// The lowest slot of `request` neither in `held` nor skipped.
fn lowest_free(request: &NetSlotRequest, held: &HashSet<u32>) -> Res<u32> {
    (0..request.capacity)
        .find(|s| !held.contains(s) && !request.skip.contains(s))
        .ok_or(Fail::Store(StoreError::QuotaExceeded(Quota::NetSlots { capacity: request.capacity })))
}

fn set_secrets_row(conn: &Connection, id: &str, sealed: Option<&[u8]>, keys: &[String]) -> Res<usize> {
    let keys_json = serde_json::to_string(keys).expect("a string list serialises");
    Ok(conn.execute(
        "UPDATE vms SET secret_env_ciphertext = ?2, secret_env_keys_json = ?3, updated_at = ?4 WHERE id = ?1",
        params![id, sealed, keys_json, now_ms()],
    )?)
}

fn upsert_link_row(conn: &Connection, l: &PeerLinkRecord) -> Res<()> {
    conn.execute(
        "INSERT INTO peer_links (consumer_vm_id, alias, provider_vm_id, source_mode, manifest_json, sync_status, sync_message, synced_at)
         VALUES (?1,?2,?3,?4,?5,?6,?7,?8)
         ON CONFLICT (consumer_vm_id, alias) DO UPDATE SET provider_vm_id = ?3, source_mode = ?4,
             manifest_json = ?5, sync_status = ?6, sync_message = ?7, synced_at = ?8",
        params![l.consumer_vm_id, l.alias, l.provider_vm_id, l.source_mode, l.manifest_json, l.sync_status, l.sync_message, l.synced_at],
    )?;
    Ok(())
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn insert_vm(&self, vm: &VmRecord) -> StoreResult<()> {
        let vm = vm.clone();
        self.run("insert_vm", move |c| insert_vm_row(c, &vm)).await
    }

    async fn create_vm(&self, new: &NewVm, limits: &VmLimits) -> StoreResult<CreatedVm> {
        let new = new.clone();
        let limits = *limits;
        self.write("create_vm", move |tx| {
            if !new.record.pool && count_live(tx)? >= limits.max_vms {
                return Err(StoreError::QuotaExceeded(Quota::Vms { max: limits.max_vms }).into());
            }
            let vm = &new.record;
            if let Some(image) = &vm.image_id {
                let exists = tx.query_row("SELECT 1 FROM images WHERE id = ?1", [image], |_| Ok(())).optional()?;
                if exists.is_none() {
                    return Err(StoreError::NotFound(format!("image {image}")).into());
                }
            }
            let net_slot = match &new.net {
                Some(request) => Some(lowest_free(request, &held_slots(tx)?)?),
                None => None,
            };
            insert_vm_row(tx, vm)?;
            tx.execute(
                "UPDATE vms SET net_slot = ?2, egress_policy_json = ?3 WHERE id = ?1",
                params![vm.id, net_slot, new.egress_policy_json],
            )?;
            if let Some(s) = &new.secrets {
                set_secrets_row(tx, &vm.id, Some(&s.ciphertext), &s.keys)?;
            }
            for link in &new.links {
                if link.consumer_vm_id != vm.id {
                    return Err(StoreError::Conflict {
                        op: "create_vm",
                        what: format!("link {:?} of another consumer ({})", link.alias, link.consumer_vm_id),
                        source: None,
                    }
                    .into());
                }
                upsert_link_row(tx, link)?;
            }
            Ok(CreatedVm { net_slot })
        })
        .await
    }

    async fn get_vm(&self, id: &str) -> StoreResult<Option<VmRecord>> {
        let id = id.to_owned();
        self.run("get_vm", move |c| {
            let row =
                c.query_row(&format!("SELECT {VM_COLUMNS} FROM vms WHERE id = ?1"), [id], vm_from_row).optional()?;
            row.map(finish_vm).transpose()
        })
        .await
    }

    async fn list_vms(&self) -> StoreResult<Vec<VmRecord>> {
        self.run("list_vms", |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {VM_COLUMNS} FROM vms WHERE state <> 'DELETED' ORDER BY created_at, id"
            ))?;
            let rows = stmt.query_map([], vm_from_row)?.collect::<Result<Vec<_>, _>>()?;
            rows.into_iter().map(finish_vm).collect()
        })
        .await
    }

    async fn count_live_vms(&self) -> StoreResult<u64> {
        self.run("count_live_vms", |c| count_live(c)).await
    }

    async fn set_vm_state(&self, id: &str, state: VmState, reason: Option<&str>) -> StoreResult<()> {
        let (id, reason) = (id.to_owned(), reason.map(str::to_owned));
        self.run("set_vm_state", move |c| {
            let n = c.execute(
                "UPDATE vms SET state = ?2, state_reason = ?3, updated_at = ?4 WHERE id = ?1",
                params![id, state.as_str(), reason, now_ms()],
            )?;
            touched(n, || vm_not_found(&id))
        })
        .await
    }

    async fn set_vm_handle(&self, id: &str, handle_json: Option<&str>) -> StoreResult<()> {
        let (id, handle_json) = (id.to_owned(), handle_json.map(str::to_owned));
        self.run("set_vm_handle", move |c| {
            let n = c.execute(
                "UPDATE vms SET handle_json = ?2, updated_at = ?3 WHERE id = ?1",
                params![id, handle_json, now_ms()],
            )?;
            touched(n, || vm_not_found(&id))
        })
        .await
    }

    async fn finish_vm_delete(&self, id: &str) -> StoreResult<()> {
        let id = id.to_owned();
        self.write("finish_vm_delete", move |tx| {
            let n = tx.execute(
                "UPDATE vms SET state = 'DELETED', state_reason = NULL, handle_json = NULL, net_slot = NULL, \
                 secret_env_ciphertext = NULL, secret_env_keys_json = '[]', updated_at = ?2 WHERE id = ?1",
                params![id, now_ms()],
            )?;
            touched(n, || vm_not_found(&id))?;
            tx.execute("DELETE FROM peer_links WHERE consumer_vm_id = ?1", [&id])?;
            Ok(())
        })
        .await
    }

    async fn vm_network(&self, id: &str) -> StoreResult<Option<VmNetworkRecord>> {
        let id = id.to_owned();
        self.run("vm_network", move |c| {
            Ok(c.query_row("SELECT net_slot, egress_policy_json FROM vms WHERE id = ?1", [id], |r| {
                Ok(VmNetworkRecord { net_slot: r.get(0)?, egress_policy_json: r.get(1)? })
            })
            .optional()?)
        })
        .await
    }

    async fn set_vm_net_slot(&self, id: &str, slot: Option<u32>) -> StoreResult<()> {
        let id = id.to_owned();
        self.write("set_vm_net_slot", move |tx| {
            if let Some(slot) = slot {
                let holder: Option<String> = tx
                    .query_row(
                        "SELECT id FROM vms WHERE net_slot = ?1 AND id <> ?2 AND state <> 'DELETED'",
                        params![slot, id],
                        |r| r.get(0),
                    )
                    .optional()?;
                if let Some(holder) = holder {
                    return Err(StoreError::Conflict {
                        op: "set_vm_net_slot",
                        what: format!("network slot {slot} (held by VM {holder})"),
                        source: None,
                    }
                    .into());
                }
                held_slots(tx)?; // frees the slot if a tombstone still holds it
            }
            let n =
                tx.execute("UPDATE vms SET net_slot = ?2, updated_at = ?3 WHERE id = ?1", params![id, slot, now_ms()])?;
            touched(n, || vm_not_found(&id))
        })
        .await
    }

    async fn allocate_net_slot(&self, id: &str, request: &NetSlotRequest) -> StoreResult<u32> {
        let (id, request) = (id.to_owned(), request.clone());
        self.write("allocate_net_slot", move |tx| {
            let current: Option<u32> = tx
                .query_row("SELECT net_slot FROM vms WHERE id = ?1", [&id], |r| r.get(0))
                .optional()?
                .ok_or_else(|| vm_not_found(&id))?;
            if let Some(slot) = current.filter(|s| *s < request.capacity && !request.skip.contains(s)) {
                return Ok(slot);
            }
            let mut held = held_slots(tx)?;
            if let Some(own) = current {
                held.remove(&own);
            }
            let slot = lowest_free(&request, &held)?;
            tx.execute("UPDATE vms SET net_slot = ?2, updated_at = ?3 WHERE id = ?1", params![id, slot, now_ms()])?;
            Ok(slot)
        })
        .await
    }

    async fn used_net_slots(&self) -> StoreResult<Vec<u32>> {
        self.run("used_net_slots", |c| {
            let mut stmt = c.prepare_cached(
                "SELECT net_slot FROM vms WHERE net_slot IS NOT NULL AND state <> 'DELETED' ORDER BY net_slot",
            )?;
            let slots = stmt.query_map([], |r| r.get(0))?.collect::<Result<Vec<u32>, _>>()?;
            Ok(slots)
        })
        .await
    }

    async fn set_vm_egress_policy(&self, id: &str, outbound_internet: bool, policy_json: &str) -> StoreResult<()> {
        let (id, policy_json) = (id.to_owned(), policy_json.to_owned());
        self.run("set_vm_egress_policy", move |c| {
            let n = c.execute(
                "UPDATE vms SET outbound_internet = ?2, egress_policy_json = ?3, updated_at = ?4 WHERE id = ?1",
                params![id, outbound_internet, policy_json, now_ms()],
            )?;
            touched(n, || vm_not_found(&id))
        })
        .await
    }

    async fn insert_event(&self, e: &NewEvent) -> StoreResult<()> {
        let e = e.clone();
        self.run("insert_event", move |c| {
            c.execute(
                "INSERT INTO events (created_at, kind, entity_type, entity_id, message, meta_json) VALUES (?1,?2,?3,?4,?5,?6)",
                params![now_ms(), e.kind, e.entity_type, e.entity_id, e.message, json_text(&e.meta)],
            )?;
            Ok(())
        })
        .await
    }

    async fn list_events(&self, limit: u32) -> StoreResult<Vec<EventRecord>> {
        self.run("list_events", move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, created_at, kind, entity_type, entity_id, message, meta_json FROM events ORDER BY id DESC LIMIT ?1",
            )?;
            let rows = stmt
                .query_map([limit], |r| {
                    Ok(EventRecord {
                        id: r.get(0)?,
                        created_at: r.get(1)?,
                        kind: r.get(2)?,
                        entity_type: r.get(3)?,
                        entity_id: r.get(4)?,
                        message: r.get(5)?,
                        meta: parse_json_text(r.get(6)?),
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn insert_exec_log(&self, e: &ExecLogRecord) -> StoreResult<()> {
        let e = e.clone();
        self.run("insert_exec_log", move |c| {
            c.execute(
                "INSERT INTO exec_logs (id, vm_id, kind, exec_id, input_json, exit_code, duration_ms, output_preview, created_at) \
                 VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9)",
                params![
                    e.id,
                    e.vm_id,
                    e.kind,
                    e.exec_id,
                    e.input.to_string(),
                    e.exit_code,
                    e.duration_ms as i64,
                    e.output_preview,
                    e.created_at
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn list_exec_logs(&self, vm_id: &str, limit: u32) -> StoreResult<(Vec<ExecLogRecord>, bool)> {
        let vm_id = vm_id.to_owned();
        self.run("list_exec_logs", move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, vm_id, kind, exec_id, input_json, exit_code, duration_ms, output_preview, created_at \
                 FROM exec_logs WHERE vm_id = ?1 ORDER BY created_at DESC, rowid DESC LIMIT ?2",
            )?;
            let mut rows = stmt
                .query_map(params![vm_id, limit as i64 + 1], |r| {
                    Ok(ExecLogRecord {
                        id: r.get(0)?,
                        vm_id: r.get(1)?,
                        kind: r.get(2)?,
                        exec_id: r.get(3)?,
                        input: parse_json_text(r.get(4)?).unwrap_or(serde_json::Value::Null),
                        exit_code: r.get(5)?,
                        duration_ms: r.get::<_, i64>(6)? as u64,
                        output_preview: r.get(7)?,
                        created_at: r.get(8)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            let has_more = rows.len() > limit as usize;
            rows.truncate(limit as usize);
            Ok((rows, has_more))
        })
        .await
    }

    async fn insert_api_key(&self, k: &ApiKeyRecord) -> StoreResult<()> {
        let k = k.clone();
        self.run("insert_api_key", move |c| {
            c.execute(
                &format!("INSERT INTO api_keys ({API_KEY_COLUMNS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8)"),
                params![k.id, k.name, k.prefix, k.hash, k.created_at, k.expires_at, k.revoked_at, k.last_used_at],
            )?;
            Ok(())
        })
        .await
    }

    async fn active_api_keys(&self, now: i64) -> StoreResult<Vec<ApiKeyRecord>> {
        self.run("active_api_keys", move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {API_KEY_COLUMNS} FROM api_keys \
                 WHERE revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ?1) ORDER BY created_at, id"
            ))?;
            let rows = stmt.query_map([now], api_key_row)?.collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn revoke_all_api_keys(&self, now: i64) -> StoreResult<u64> {
        self.run("revoke_all_api_keys", move |c| {
            let n = c.execute("UPDATE api_keys SET revoked_at = ?1 WHERE revoked_at IS NULL", [now])?;
            Ok(n as u64)
        })
        .await
    }

    async fn list_api_keys(&self) -> StoreResult<Vec<ApiKeyRecord>> {
        self.run("list_api_keys", move |c| {
            let mut stmt =
                c.prepare_cached(&format!("SELECT {API_KEY_COLUMNS} FROM api_keys ORDER BY created_at DESC, id"))?;
            let rows = stmt.query_map([], api_key_row)?.collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn revoke_api_key(&self, id: &str, now: i64) -> StoreResult<()> {
        let id = id.to_owned();
        self.run("revoke_api_key", move |c| {
            let n = c.execute(
                "UPDATE api_keys SET revoked_at = ?1 WHERE id = ?2 AND revoked_at IS NULL",
                params![now, id],
            )?;
            touched(n, || Fail::Store(StoreError::NotFound(format!("active API key {id}"))))
        })
        .await
    }

    async fn touch_api_key(&self, id: &str, now: i64) -> StoreResult<()> {
        let id = id.to_owned();
        self.run("touch_api_key", move |c| {
            c.execute("UPDATE api_keys SET last_used_at = ?1 WHERE id = ?2", params![now, id])?;
            Ok(())
        })
        .await
    }

    async fn set_vm_secrets(&self, id: &str, sealed: Option<&[u8]>, keys: &[String]) -> StoreResult<()> {
        let (id, sealed, keys) = (id.to_owned(), sealed.map(<[u8]>::to_vec), keys.to_vec());
        self.run("set_vm_secrets", move |c| {
            let n = set_secrets_row(c, &id, sealed.as_deref(), &keys)?;
            touched(n, || vm_not_found(&id))
        })
        .await
    }

    async fn vm_secret_keys(&self, id: &str) -> StoreResult<Vec<String>> {
        let id = id.to_owned();
        self.run("vm_secret_keys", move |c| {
            let json: Option<String> = c
                .query_row("SELECT secret_env_keys_json FROM vms WHERE id = ?1", [id], |r| r.get(0))
                .optional()?
                .flatten();
            Ok(json.and_then(|j| serde_json::from_str(&j).ok()).unwrap_or_default())
        })
        .await
    }

    async fn upsert_peer_link(&self, l: &PeerLinkRecord) -> StoreResult<()> {
        let l = l.clone();
        self.run("upsert_peer_link", move |c| upsert_link_row(c, &l)).await
    }

    async fn put_peer_link(&self, l: &PeerLinkRecord, max_links: u32) -> StoreResult<()> {
        let l = l.clone();
        self.write("put_peer_link", move |tx| {
            let exists = tx
                .query_row(
                    "SELECT 1 FROM peer_links WHERE consumer_vm_id = ?1 AND alias = ?2",
                    [&l.consumer_vm_id, &l.alias],
                    |_| Ok(()),
                )
                .optional()?
                .is_some();
            if !exists {
                let n: i64 = tx.query_row(
                    "SELECT COUNT(*) FROM peer_links WHERE consumer_vm_id = ?1",
                    [&l.consumer_vm_id],
                    |r| r.get(0),
                )?;
                if n >= i64::from(max_links) {
                    return Err(StoreError::QuotaExceeded(Quota::PeerLinks {
                        consumer: l.consumer_vm_id.clone(),
                        max: max_links,
                    })
                    .into());
                }
            }
            upsert_link_row(tx, &l)
        })
        .await
    }

    async fn delete_peer_link(&self, consumer: &str, alias: &str) -> StoreResult<bool> {
        let (consumer, alias) = (consumer.to_owned(), alias.to_owned());
        self.run("delete_peer_link", move |c| {
            let n = c.execute("DELETE FROM peer_links WHERE consumer_vm_id = ?1 AND alias = ?2", [consumer, alias])?;
            Ok(n > 0)
        })
        .await
    }

    async fn delete_peer_links_of(&self, consumer: &str) -> StoreResult<()> {
        let consumer = consumer.to_owned();
        self.run("delete_peer_links_of", move |c| {
            c.execute("DELETE FROM peer_links WHERE consumer_vm_id = ?1", [consumer])?;
            Ok(())
        })
        .await
    }

    async fn list_peer_links(&self, consumer: &str) -> StoreResult<Vec<PeerLinkRecord>> {
        let consumer = consumer.to_owned();
        self.run("list_peer_links", move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {LINK_COLUMNS} FROM peer_links WHERE consumer_vm_id = ?1 ORDER BY alias"
            ))?;
            let rows = stmt.query_map([consumer], link_from_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn get_peer_link(&self, consumer: &str, alias: &str) -> StoreResult<Option<PeerLinkRecord>> {
        let (consumer, alias) = (consumer.to_owned(), alias.to_owned());
        self.run("get_peer_link", move |c| {
            Ok(c.query_row(
                &format!("SELECT {LINK_COLUMNS} FROM peer_links WHERE consumer_vm_id = ?1 AND alias = ?2"),
                [consumer, alias],
                link_from_row,
            )
            .optional()?)
        })
        .await
    }

    async fn set_peer_sync(
        &self,
        consumer: &str,
        alias: &str,
        status: &str,
        message: Option<&str>,
        manifest_json: Option<&str>,
    ) -> StoreResult<()> {
        let (consumer, alias, status) = (consumer.to_owned(), alias.to_owned(), status.to_owned());
        let (message, manifest_json) = (message.map(str::to_owned), manifest_json.map(str::to_owned));
        self.run("set_peer_sync", move |c| {
            c.execute(
                "UPDATE peer_links SET sync_status = ?3, sync_message = ?4, manifest_json = ?5, synced_at = ?6
                 WHERE consumer_vm_id = ?1 AND alias = ?2",
                params![consumer, alias, status, message, manifest_json, now_ms()],
            )?;
            Ok(())
        })
        .await
    }

    async fn insert_peer_call(&self, call: &PeerCallRecord) -> StoreResult<()> {
        let c = call.clone();
        self.run("insert_peer_call", move |conn| {
            conn.execute(
                "INSERT INTO peer_calls (id, consumer_vm_id, provider_vm_id, alias, export_name, status, code, duration_ms, created_at)
                 VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9)",
                params![c.id, c.consumer_vm_id, c.provider_vm_id, c.alias, c.export_name, c.status, c.code, c.duration_ms as i64, c.created_at],
            )?;
            Ok(())
        })
        .await
    }

    async fn list_peer_calls(&self, vm_id: Option<&str>, limit: u32) -> StoreResult<Vec<PeerCallRecord>> {
        let vm_id = vm_id.map(str::to_owned);
        self.run("list_peer_calls", move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, consumer_vm_id, provider_vm_id, alias, export_name, status, code, duration_ms, created_at
                 FROM peer_calls WHERE ?1 IS NULL OR consumer_vm_id = ?1 OR provider_vm_id = ?1
                 ORDER BY created_at DESC, rowid DESC LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![vm_id, limit], |r| {
                Ok(PeerCallRecord {
                    id: r.get(0)?,
                    consumer_vm_id: r.get(1)?,
                    provider_vm_id: r.get(2)?,
                    alias: r.get(3)?,
                    export_name: r.get(4)?,
                    status: r.get(5)?,
                    code: r.get(6)?,
                    duration_ms: r.get::<_, i64>(7)? as u64,
                    created_at: r.get(8)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn insert_image(&self, i: &ImageRecord) -> StoreResult<()> {
        let i = i.clone();
        self.run("insert_image", move |c| {
            c.execute(
                &format!("INSERT INTO images ({IMAGE_COLUMNS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11)"),
                params![
                    i.id,
                    i.name,
                    i.description,
                    i.created_at,
                    i.kernel_bytes.map(|n| n as i64),
                    i.initrd_bytes.map(|n| n as i64),
                    i.rootfs_bytes.map(|n| n as i64),
                    i.kernel_uploaded_at,
                    i.initrd_uploaded_at,
                    i.rootfs_uploaded_at,
                    i.manifest_json
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn get_image(&self, id: &str) -> StoreResult<Option<ImageRecord>> {
        let id = id.to_owned();
        self.run("get_image", move |c| {
            Ok(c.query_row(&format!("SELECT {IMAGE_COLUMNS} FROM images WHERE id = ?1"), [id], image_from_row)
                .optional()?)
        })
        .await
    }

    async fn list_images(&self) -> StoreResult<Vec<ImageRecord>> {
        self.run("list_images", |c| {
            let mut stmt = c.prepare_cached(&format!("SELECT {IMAGE_COLUMNS} FROM images ORDER BY created_at, id"))?;
            let rows = stmt.query_map([], image_from_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn set_image_part(&self, id: &str, part: ImagePart, bytes: u64, at_ms: i64) -> StoreResult<()> {
        // Column names come from a closed enum, never from input.
        let (size_col, at_col) = match part {
            ImagePart::Kernel => ("kernel_bytes", "kernel_uploaded_at"),
            ImagePart::Initrd => ("initrd_bytes", "initrd_uploaded_at"),
            ImagePart::Rootfs => ("rootfs_bytes", "rootfs_uploaded_at"),
        };
        let id = id.to_owned();
        self.run("set_image_part", move |c| {
            let n = c.execute(
                &format!("UPDATE images SET {size_col} = ?2, {at_col} = ?3 WHERE id = ?1"),
                params![id, bytes as i64, at_ms],
            )?;
            touched(n, || Fail::Store(StoreError::NotFound(format!("image {id}"))))
        })
        .await
    }

    async fn set_image_manifest(&self, id: &str, manifest_json: Option<&str>) -> StoreResult<()> {
        let (id, manifest_json) = (id.to_owned(), manifest_json.map(str::to_owned));
        self.run("set_image_manifest", move |c| {
            let n = c.execute("UPDATE images SET manifest_json = ?2 WHERE id = ?1", params![id, manifest_json])?;
            touched(n, || Fail::Store(StoreError::NotFound(format!("image {id}"))))
        })
        .await
    }

    async fn delete_image(&self, id: &str, default_setting: &str) -> StoreResult<bool> {
        let (id, default_setting) = (id.to_owned(), default_setting.to_owned());
        self.write("delete_image", move |tx| {
            let users: i64 =
                tx.query_row("SELECT COUNT(*) FROM vms WHERE image_id = ?1 AND state <> 'DELETED'", [&id], |r| {
                    r.get(0)
                })?;
            if users > 0 {
                return Err(StoreError::InUse { what: format!("image {id}"), users: users as u64 }.into());
            }
            let existed = tx.execute("DELETE FROM images WHERE id = ?1", [&id])? > 0;
            tx.execute("DELETE FROM settings WHERE key = ?1 AND value = ?2", [&default_setting, &id])?;
            Ok(existed)
        })
        .await
    }

    async fn count_live_vms_with_image(&self, image_id: &str) -> StoreResult<u64> {
        let image_id = image_id.to_owned();
        self.run("count_live_vms_with_image", move |c| {
            let n: i64 =
                c.query_row("SELECT COUNT(*) FROM vms WHERE image_id = ?1 AND state <> 'DELETED'", [image_id], |r| {
                    r.get(0)
                })?;
            Ok(n as u64)
        })
        .await
    }

    async fn get_setting(&self, key: &str) -> StoreResult<Option<String>> {
        let key = key.to_owned();
        self.run("get_setting", move |c| {
            Ok(c.query_row("SELECT value FROM settings WHERE key = ?1", [key], |r| r.get(0)).optional()?)
        })
        .await
    }

    async fn set_setting(&self, key: &str, value: Option<&str>) -> StoreResult<()> {
        let (key, value) = (key.to_owned(), value.map(str::to_owned));
        self.run("set_setting", move |c| {
            match value {
                Some(v) => c.execute(
                    "INSERT INTO settings (key, value) VALUES (?1, ?2)
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    params![key, v],
                )?,
                None => c.execute("DELETE FROM settings WHERE key = ?1", [key])?,
            };
            Ok(())
        })
        .await
    }

    async fn init_setting(&self, key: &str, value: &str) -> StoreResult<String> {
        let (key, value) = (key.to_owned(), value.to_owned());
        self.write("init_setting", move |tx| {
            tx.execute(
                "INSERT INTO settings (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO NOTHING",
                params![key, value],
            )?;
            Ok(tx.query_row("SELECT value FROM settings WHERE key = ?1", [key], |r| r.get(0))?)
        })
        .await
    }

    async fn claim_pool_vm(&self, claim: &PoolClaim, limits: &VmLimits) -> StoreResult<Option<String>> {
        let (claim, limits) = (claim.clone(), *limits);
        self.write("claim_pool_vm", move |tx| {
            if count_live(tx)? >= limits.max_vms {
                return Err(StoreError::QuotaExceeded(Quota::Vms { max: limits.max_vms }).into());
            }
            let id: Option<String> = tx
                .query_row(
                    "SELECT id FROM vms WHERE pool = 1 AND state = 'RUNNING' AND runtime = ?1 AND cpu = ?2 \
                     AND mem_mb = ?3 AND disk_mb = ?4 AND image_id IS ?5 ORDER BY created_at, id LIMIT 1",
                    params![claim.runtime, claim.cpu, claim.mem_mb, claim.disk_mb, claim.image_id],
                    |r| r.get(0),
                )
                .optional()?;
            let Some(id) = id else { return Ok(None) };
            tx.execute(
                "UPDATE vms SET pool = 0, outbound_internet = ?2, allow_ips_json = ?3, egress_policy_json = ?4, \
                 updated_at = ?5 WHERE id = ?1",
                params![id, claim.outbound_internet, claim.allow_ips_json, claim.egress_policy_json, now_ms()],
            )?;
            if let Some(s) = &claim.secrets {
                set_secrets_row(tx, &id, Some(&s.ciphertext), &s.keys)?;
            }
            for link in &claim.links {
                upsert_link_row(tx, &PeerLinkRecord { consumer_vm_id: id.clone(), ..link.clone() })?;
            }
            Ok(Some(id))
        })
        .await
    }

    async fn set_vm_provision(&self, id: &str, mode: &str, snapshot_id: Option<&str>) -> StoreResult<()> {
        let (id, mode, snapshot_id) = (id.to_owned(), mode.to_owned(), snapshot_id.map(str::to_owned));
        self.run("set_vm_provision", move |c| {
            let n = c.execute(
                "UPDATE vms SET provision_mode = ?2, snapshot_id = COALESCE(?3, snapshot_id), updated_at = ?4 WHERE id = ?1",
                params![id, mode, snapshot_id, now_ms()],
            )?;
            touched(n, || vm_not_found(&id))
        })
        .await
    }

    async fn insert_snapshot(&self, snap: &SnapshotRecord) -> StoreResult<()> {
        let snap = snap.clone();
        self.run("insert_snapshot", move |c| {
            c.execute(
                &format!(
                    "INSERT INTO snapshots ({SNAPSHOT_COLUMNS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13)"
                ),
                params![
                    snap.id,
                    snap.kind,
                    snap.content,
                    snap.state.as_str(),
                    snap.internal,
                    snap.runtime,
                    snap.source_vm_id,
                    snap.image_id,
                    snap.cpu,
                    snap.mem_mb,
                    snap.disk_mb,
                    snap.bytes as i64,
                    snap.created_at
                ],
            )
            .map_err(|e| match e {
                rusqlite::Error::SqliteFailure(f, _) if f.code == ErrorCode::ConstraintViolation => {
                    Fail::Store(StoreError::Conflict {
                        op: "insert_snapshot",
                        what: format!("snapshot id {}", snap.id),
                        source: Some(Box::new(e)),
                    })
                }
                e => Fail::Db(e),
            })?;
            Ok(())
        })
        .await
    }

    async fn finish_snapshot(&self, id: &str, content: &str, bytes: u64) -> StoreResult<()> {
        let (id, content) = (id.to_owned(), content.to_owned());
        self.run("finish_snapshot", move |c| {
            let n = c.execute(
                "UPDATE snapshots SET state = 'ready', content = ?2, bytes = ?3 WHERE id = ?1",
                params![id, content, bytes as i64],
            )?;
            touched(n, || Fail::Store(StoreError::NotFound(format!("snapshot {id}"))))
        })
        .await
    }

    async fn get_snapshot(&self, id: &str) -> StoreResult<Option<SnapshotRecord>> {
        let id = id.to_owned();
        self.run("get_snapshot", move |c| {
            let row = c
                .query_row(&format!("SELECT {SNAPSHOT_COLUMNS} FROM snapshots WHERE id = ?1"), [id], snapshot_from_row)
                .optional()?;
            row.map(finish_snapshot).transpose()
        })
        .await
    }

    async fn list_snapshots(&self) -> StoreResult<Vec<SnapshotRecord>> {
        self.run("list_snapshots", |c| {
            let mut stmt =
                c.prepare_cached(&format!("SELECT {SNAPSHOT_COLUMNS} FROM snapshots ORDER BY created_at, id"))?;
            let rows = stmt.query_map([], snapshot_from_row)?.collect::<Result<Vec<_>, _>>()?;
            rows.into_iter().map(finish_snapshot).collect()
        })
        .await
    }

    async fn delete_snapshot(&self, id: &str) -> StoreResult<bool> {
        let id = id.to_owned();
        self.run("delete_snapshot", move |c| Ok(c.execute("DELETE FROM snapshots WHERE id = ?1", [id])? > 0)).await
    }
}

const IMAGE_COLUMNS: &str = "id, name, description, created_at, kernel_bytes, initrd_bytes, rootfs_bytes, \
     kernel_uploaded_at, initrd_uploaded_at, rootfs_uploaded_at, manifest_json";

fn image_from_row(r: &Row<'_>) -> rusqlite::Result<ImageRecord> {
    let size = |i: usize| r.get::<_, Option<i64>>(i).map(|v| v.map(|n| n as u64));
    Ok(ImageRecord {
        id: r.get(0)?,
        name: r.get(1)?,
        description: r.get(2)?,
        created_at: r.get(3)?,
        kernel_bytes: size(4)?,
        initrd_bytes: size(5)?,
        rootfs_bytes: size(6)?,
        kernel_uploaded_at: r.get(7)?,
        initrd_uploaded_at: r.get(8)?,
        rootfs_uploaded_at: r.get(9)?,
        manifest_json: r.get(10)?,
    })
}

const LINK_COLUMNS: &str =
    "consumer_vm_id, alias, provider_vm_id, source_mode, manifest_json, sync_status, sync_message, synced_at";

fn link_from_row(r: &Row<'_>) -> rusqlite::Result<PeerLinkRecord> {
    Ok(PeerLinkRecord {
        consumer_vm_id: r.get(0)?,
        alias: r.get(1)?,
        provider_vm_id: r.get(2)?,
        source_mode: r.get(3)?,
        manifest_json: r.get(4)?,
        sync_status: r.get(5)?,
        sync_message: r.get(6)?,
        synced_at: r.get(7)?,
    })
}

#[cfg(test)]
mod tests {
    //! SQLite-specific behaviour; the backend-neutral contract is in [`crate::conformance`].
    use super::*;
    use crate::conformance::vm;

    #[tokio::test]
    async fn database_files_are_private_and_loose_modes_are_fixed_at_open() {
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("storage");
        let db = root.join("rds.db");
        {
            let s = SqliteStore::open(&db).unwrap();
            s.insert_vm(&vm("a", VmState::Running, 1)).await.unwrap();
            assert_eq!(mode(&root), 0o700);
            for suffix in ["", "-wal", "-shm"] {
                let file = root.join(format!("rds.db{suffix}"));
                assert_eq!(mode(&file), 0o600, "{}", file.display());
            }
        }
        // An older rds (or an operator) left them readable: the next open closes them again.
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
        let s = SqliteStore::open(&db).unwrap();
        assert_eq!(s.get_vm("a").await.unwrap().unwrap().state, VmState::Running);
        assert_eq!((mode(&root), mode(&db)), (0o700, 0o600));
    }

    #[tokio::test]
    async fn reopening_a_file_keeps_data_and_does_not_rerun_migrations() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/rds.db");
        SqliteStore::open(&path).unwrap().insert_vm(&vm("a", VmState::Running, 1)).await.unwrap();
        let s = crate::open(&crate::StoreConfig::Sqlite { path: path.clone() }).await.unwrap();
        assert_eq!(s.get_vm("a").await.unwrap().unwrap().state, VmState::Running);
        let v: i64 =
            SqliteStore::open(&path).unwrap().conn().query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(v, migrations::LATEST);
    }

    #[tokio::test]
    async fn a_database_of_schema_version_3_is_migrated_and_keeps_its_vms() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rds.db");
        {
            let conn = Connection::open(&path).unwrap();
            for sql in &migrations::MIGRATIONS[..3] {
                conn.execute_batch(sql).unwrap();
            }
            conn.execute_batch(
                "PRAGMA user_version = 3;
                 INSERT INTO vms (id, state, cpu, mem_mb, runtime, created_at, updated_at, net_slot)
                 VALUES ('old', 'STOPPED', 2, 512, 'sandbox', 5, 6, 4);",
            )
            .unwrap();
        }
        let s = SqliteStore::open(&path).unwrap();
        let old = s.get_vm("old").await.unwrap().unwrap();
        assert_eq!((old.state, old.cpu, old.disk_mb), (VmState::Stopped, 2, 1024), "disk_mb gets its default");
        assert_eq!(s.used_net_slots().await.unwrap(), [4]);
        let v: i64 = s.conn().query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(v, migrations::LATEST);
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rds.db");
        Connection::open(&path).unwrap().execute_batch("PRAGMA user_version = 999").unwrap();
        assert!(matches!(SqliteStore::open(&path), Err(StoreError::TooNew { found: 999, .. })));
    }

    #[tokio::test]
    async fn a_backend_failure_names_the_operation_and_keeps_the_sqlite_cause() {
        let s = SqliteStore::open_in_memory().unwrap();
        s.conn().execute_batch("DROP TABLE events").unwrap();
        let e = s.list_events(1).await.unwrap_err();
        assert!(matches!(e, StoreError::Backend { op: "list_events", .. }), "{e:?}");
        let cause = std::error::Error::source(&e).expect("the SQLite error is kept");
        assert!(cause.to_string().contains("no such table"), "{cause}");
    }

    #[tokio::test]
    async fn a_tombstone_left_holding_a_slot_by_an_older_rds_does_not_block_it() {
        let s = SqliteStore::open_in_memory().unwrap();
        s.insert_vm(&vm("gone", VmState::Deleted, 1)).await.unwrap();
        s.conn().execute("UPDATE vms SET net_slot = 0 WHERE id = 'gone'", []).unwrap();
        s.insert_vm(&vm("a", VmState::Stopped, 2)).await.unwrap();
        let req = NetSlotRequest { capacity: 2, skip: vec![] };
        assert_eq!(s.allocate_net_slot("a", &req).await.unwrap(), 0);
    }
}
