//! [`Store`] on a SQLite file: WAL journal, busy timeout, one connection behind a mutex.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::{
    migrations, now_ms, ApiKeyRecord, EventRecord, ExecLogRecord, ImagePart, ImageRecord,
    NewEvent, PeerCallRecord, PeerLinkRecord, Store, StoreError, StoreResult, VmNetworkRecord, VmRecord, VmState,
};

/// SQLite implementation of [`Store`].
pub struct SqliteStore {
    conn: Mutex<Connection>,
}

const VM_COLUMNS: &str = "id, state, state_reason, cpu, mem_mb, runtime, image_id, handle_json, \
     outbound_internet, allow_ips_json, secret_env_ciphertext, created_at, updated_at, disk_mb";

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and migrates it to the latest schema.
    /// The database's directory is made 0700 and the database files 0600 (fixed if they exist):
    /// they hold API key hashes, sealed secrets and every VM's record.
    pub fn open(path: &Path) -> StoreResult<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .and_then(|()| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)))
                .map_err(|source| StoreError::Dir {
                    path: dir.display().to_string(),
                    source,
                })?;
        }
        // Created 0600 before SQLite opens it: SQLite gives its -wal and -shm files the same mode.
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(|source| StoreError::File { path: path.display().to_string(), source })?;
        let store = Self::setup(Connection::open(path)?)?;
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
        Self::setup(Connection::open_in_memory()?)
    }

    fn setup(mut conn: Connection) -> StoreResult<Self> {
        conn.busy_timeout(Duration::from_secs(5))?;
        // WAL lets readers (e.g. an admin tool) proceed while the manager writes.
        conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))?;
        conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;")?;
        migrations::migrate(&mut conn)?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent (statements are atomic).
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
        },
        state,
    ))
}

fn finish_vm((mut vm, state): (VmRecord, String)) -> StoreResult<VmRecord> {
    vm.state = VmState::parse(&state)?;
    Ok(vm)
}

fn json_text(v: &Option<serde_json::Value>) -> Option<String> {
    v.as_ref().map(|v| v.to_string())
}

fn parse_json_text(s: Option<String>) -> Option<serde_json::Value> {
    s.and_then(|s| serde_json::from_str(&s).ok())
}

impl Store for SqliteStore {
    fn insert_vm(&self, vm: &VmRecord) -> StoreResult<()> {
        self.conn().execute(
            &format!("INSERT INTO vms ({VM_COLUMNS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14)"),
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
                vm.disk_mb
            ],
        )?;
        Ok(())
    }

    fn get_vm(&self, id: &str) -> StoreResult<Option<VmRecord>> {
        let row = self
            .conn()
            .query_row(
                &format!("SELECT {VM_COLUMNS} FROM vms WHERE id = ?1"),
                [id],
                vm_from_row,
            )
            .optional()?;
        row.map(finish_vm).transpose()
    }

    fn list_vms(&self) -> StoreResult<Vec<VmRecord>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {VM_COLUMNS} FROM vms WHERE state <> 'DELETED' ORDER BY created_at, id"
        ))?;
        let rows = stmt
            .query_map([], vm_from_row)?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter().map(finish_vm).collect()
    }

    fn count_live_vms(&self) -> StoreResult<u64> {
        let n: i64 = self.conn().query_row(
            "SELECT COUNT(*) FROM vms WHERE state <> 'DELETED'",
            [],
            |r| r.get(0),
        )?;
        Ok(n as u64)
    }

    fn set_vm_state(&self, id: &str, state: VmState, reason: Option<&str>) -> StoreResult<()> {
        let n = self.conn().execute(
            "UPDATE vms SET state = ?2, state_reason = ?3, updated_at = ?4 WHERE id = ?1",
            params![id, state.as_str(), reason, now_ms()],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("vm {id}")));
        }
        Ok(())
    }

    fn set_vm_handle(&self, id: &str, handle_json: Option<&str>) -> StoreResult<()> {
        let n = self.conn().execute(
            "UPDATE vms SET handle_json = ?2, updated_at = ?3 WHERE id = ?1",
            params![id, handle_json, now_ms()],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("vm {id}")));
        }
        Ok(())
    }

    fn vm_network(&self, id: &str) -> StoreResult<Option<VmNetworkRecord>> {
        let row = self
            .conn()
            .query_row(
                "SELECT net_slot, egress_policy_json FROM vms WHERE id = ?1",
                [id],
                |r| {
                    Ok(VmNetworkRecord {
                        net_slot: r.get(0)?,
                        egress_policy_json: r.get(1)?,
                    })
                },
            )
            .optional()?;
        Ok(row)
    }

    fn set_vm_net_slot(&self, id: &str, slot: Option<u32>) -> StoreResult<()> {
        let n = self.conn().execute(
            "UPDATE vms SET net_slot = ?2, updated_at = ?3 WHERE id = ?1",
            params![id, slot, now_ms()],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("vm {id}")));
        }
        Ok(())
    }

    fn used_net_slots(&self) -> StoreResult<Vec<u32>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT net_slot FROM vms WHERE net_slot IS NOT NULL AND state <> 'DELETED' ORDER BY net_slot",
        )?;
        let slots = stmt
            .query_map([], |r| r.get(0))?
            .collect::<Result<Vec<u32>, _>>()?;
        Ok(slots)
    }

    fn set_vm_egress_policy(&self, id: &str, outbound_internet: bool, policy_json: &str) -> StoreResult<()> {
        let n = self.conn().execute(
            "UPDATE vms SET outbound_internet = ?2, egress_policy_json = ?3, updated_at = ?4 WHERE id = ?1",
            params![id, outbound_internet, policy_json, now_ms()],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("vm {id}")));
        }
        Ok(())
    }

    fn insert_event(&self, e: &NewEvent) -> StoreResult<()> {
        self.conn().execute(
            "INSERT INTO events (created_at, kind, entity_type, entity_id, message, meta_json) VALUES (?1,?2,?3,?4,?5,?6)",
            params![now_ms(), e.kind, e.entity_type, e.entity_id, e.message, json_text(&e.meta)],
        )?;
        Ok(())
    }

    fn list_events(&self, limit: u32) -> StoreResult<Vec<EventRecord>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
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
    }

    fn insert_exec_log(&self, e: &ExecLogRecord) -> StoreResult<()> {
        self.conn().execute(
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
    }

    fn list_exec_logs(&self, vm_id: &str, limit: u32) -> StoreResult<(Vec<ExecLogRecord>, bool)> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
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
    }

    fn insert_api_key(&self, k: &ApiKeyRecord) -> StoreResult<()> {
        self.conn().execute(
            "INSERT INTO api_keys (id, name, prefix, hash, created_at, expires_at, revoked_at) VALUES (?1,?2,?3,?4,?5,?6,?7)",
            params![k.id, k.name, k.prefix, k.hash, k.created_at, k.expires_at, k.revoked_at],
        )?;
        Ok(())
    }

    fn active_api_keys(&self, now: i64) -> StoreResult<Vec<ApiKeyRecord>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT id, name, prefix, hash, created_at, expires_at, revoked_at FROM api_keys \
             WHERE revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ?1) ORDER BY created_at",
        )?;
        let rows = stmt
            .query_map([now], |r| {
                Ok(ApiKeyRecord {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    prefix: r.get(2)?,
                    hash: r.get(3)?,
                    created_at: r.get(4)?,
                    expires_at: r.get(5)?,
                    revoked_at: r.get(6)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    fn revoke_all_api_keys(&self, now: i64) -> StoreResult<u64> {
        let n = self.conn().execute(
            "UPDATE api_keys SET revoked_at = ?1 WHERE revoked_at IS NULL",
            [now],
        )?;
        Ok(n as u64)
    }

    fn set_vm_secrets(&self, id: &str, sealed: Option<&[u8]>, keys: &[String]) -> StoreResult<()> {
        let keys_json = serde_json::to_string(keys).expect("a string list serialises");
        let n = self.conn().execute(
            "UPDATE vms SET secret_env_ciphertext = ?2, secret_env_keys_json = ?3, updated_at = ?4 WHERE id = ?1",
            params![id, sealed, keys_json, now_ms()],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("vm {id}")));
        }
        Ok(())
    }

    fn vm_secret_keys(&self, id: &str) -> StoreResult<Vec<String>> {
        let json: Option<String> = self
            .conn()
            .query_row("SELECT secret_env_keys_json FROM vms WHERE id = ?1", [id], |r| r.get(0))
            .optional()?
            .flatten();
        Ok(json.and_then(|j| serde_json::from_str(&j).ok()).unwrap_or_default())
    }

    fn upsert_peer_link(&self, l: &PeerLinkRecord) -> StoreResult<()> {
        self.conn().execute(
            "INSERT INTO peer_links (consumer_vm_id, alias, provider_vm_id, source_mode, manifest_json, sync_status, sync_message, synced_at)
             VALUES (?1,?2,?3,?4,?5,?6,?7,?8)
             ON CONFLICT (consumer_vm_id, alias) DO UPDATE SET provider_vm_id = ?3, source_mode = ?4,
                 manifest_json = ?5, sync_status = ?6, sync_message = ?7, synced_at = ?8",
            params![l.consumer_vm_id, l.alias, l.provider_vm_id, l.source_mode, l.manifest_json, l.sync_status, l.sync_message, l.synced_at],
        )?;
        Ok(())
    }

    fn delete_peer_link(&self, consumer: &str, alias: &str) -> StoreResult<bool> {
        let n = self
            .conn()
            .execute("DELETE FROM peer_links WHERE consumer_vm_id = ?1 AND alias = ?2", [consumer, alias])?;
        Ok(n > 0)
    }

    fn delete_peer_links_of(&self, consumer: &str) -> StoreResult<()> {
        self.conn().execute("DELETE FROM peer_links WHERE consumer_vm_id = ?1", [consumer])?;
        Ok(())
    }

    fn list_peer_links(&self, consumer: &str) -> StoreResult<Vec<PeerLinkRecord>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!("SELECT {LINK_COLUMNS} FROM peer_links WHERE consumer_vm_id = ?1 ORDER BY alias"))?;
        let rows = stmt.query_map([consumer], link_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn get_peer_link(&self, consumer: &str, alias: &str) -> StoreResult<Option<PeerLinkRecord>> {
        Ok(self
            .conn()
            .query_row(
                &format!("SELECT {LINK_COLUMNS} FROM peer_links WHERE consumer_vm_id = ?1 AND alias = ?2"),
                [consumer, alias],
                link_from_row,
            )
            .optional()?)
    }

    fn set_peer_sync(
        &self,
        consumer: &str,
        alias: &str,
        status: &str,
        message: Option<&str>,
        manifest_json: Option<&str>,
    ) -> StoreResult<()> {
        self.conn().execute(
            "UPDATE peer_links SET sync_status = ?3, sync_message = ?4, manifest_json = ?5, synced_at = ?6
             WHERE consumer_vm_id = ?1 AND alias = ?2",
            params![consumer, alias, status, message, manifest_json, now_ms()],
        )?;
        Ok(())
    }

    fn insert_peer_call(&self, c: &PeerCallRecord) -> StoreResult<()> {
        self.conn().execute(
            "INSERT INTO peer_calls (id, consumer_vm_id, provider_vm_id, alias, export_name, status, code, duration_ms, created_at)
             VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9)",
            params![c.id, c.consumer_vm_id, c.provider_vm_id, c.alias, c.export_name, c.status, c.code, c.duration_ms as i64, c.created_at],
        )?;
        Ok(())
    }

    fn list_peer_calls(&self, vm_id: Option<&str>, limit: u32) -> StoreResult<Vec<PeerCallRecord>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
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
    }

    fn insert_image(&self, i: &ImageRecord) -> StoreResult<()> {
        self.conn().execute(
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
    }

    fn get_image(&self, id: &str) -> StoreResult<Option<ImageRecord>> {
        Ok(self
            .conn()
            .query_row(
                &format!("SELECT {IMAGE_COLUMNS} FROM images WHERE id = ?1"),
                [id],
                image_from_row,
            )
            .optional()?)
    }

    fn list_images(&self) -> StoreResult<Vec<ImageRecord>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {IMAGE_COLUMNS} FROM images ORDER BY created_at, id"
        ))?;
        let rows = stmt.query_map([], image_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn set_image_part(&self, id: &str, part: ImagePart, bytes: u64, at_ms: i64) -> StoreResult<()> {
        // Column names come from a closed enum, never from input.
        let (size_col, at_col) = match part {
            ImagePart::Kernel => ("kernel_bytes", "kernel_uploaded_at"),
            ImagePart::Initrd => ("initrd_bytes", "initrd_uploaded_at"),
            ImagePart::Rootfs => ("rootfs_bytes", "rootfs_uploaded_at"),
        };
        let n = self.conn().execute(
            &format!("UPDATE images SET {size_col} = ?2, {at_col} = ?3 WHERE id = ?1"),
            params![id, bytes as i64, at_ms],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("image {id}")));
        }
        Ok(())
    }

    fn set_image_manifest(&self, id: &str, manifest_json: Option<&str>) -> StoreResult<()> {
        let n = self.conn().execute(
            "UPDATE images SET manifest_json = ?2 WHERE id = ?1",
            params![id, manifest_json],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("image {id}")));
        }
        Ok(())
    }

    fn delete_image(&self, id: &str) -> StoreResult<bool> {
        Ok(self.conn().execute("DELETE FROM images WHERE id = ?1", [id])? > 0)
    }

    fn count_live_vms_with_image(&self, image_id: &str) -> StoreResult<u64> {
        let n: i64 = self.conn().query_row(
            "SELECT COUNT(*) FROM vms WHERE image_id = ?1 AND state <> 'DELETED'",
            [image_id],
            |r| r.get(0),
        )?;
        Ok(n as u64)
    }

    fn get_setting(&self, key: &str) -> StoreResult<Option<String>> {
        Ok(self
            .conn()
            .query_row("SELECT value FROM settings WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
    }

    fn set_setting(&self, key: &str, value: Option<&str>) -> StoreResult<()> {
        match value {
            Some(v) => self.conn().execute(
                "INSERT INTO settings (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![key, v],
            )?,
            None => self.conn().execute("DELETE FROM settings WHERE key = ?1", [key])?,
        };
        Ok(())
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
    use super::*;

    fn vm(id: &str, state: VmState) -> VmRecord {
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
            created_at: now_ms(),
            updated_at: now_ms(),
        }
    }

    #[test]
    fn vm_round_trips_and_tombstones_are_hidden_from_list_and_count() {
        let s = SqliteStore::open_in_memory().unwrap();
        s.insert_vm(&vm("a", VmState::Creating)).unwrap();
        s.insert_vm(&vm("b", VmState::Running)).unwrap();
        s.set_vm_state("a", VmState::Error, Some("boot failed"))
            .unwrap();
        s.set_vm_handle("b", Some(r#"{"pid":1}"#)).unwrap();
        let a = s.get_vm("a").unwrap().unwrap();
        assert_eq!(a.state, VmState::Error);
        assert_eq!(a.state_reason.as_deref(), Some("boot failed"));
        assert_eq!(
            s.get_vm("b").unwrap().unwrap().handle_json.as_deref(),
            Some(r#"{"pid":1}"#)
        );
        assert_eq!(s.count_live_vms().unwrap(), 2);
        s.set_vm_state("a", VmState::Deleted, None).unwrap();
        assert_eq!(s.count_live_vms().unwrap(), 1);
        assert_eq!(
            s.list_vms()
                .unwrap()
                .iter()
                .map(|v| v.id.as_str())
                .collect::<Vec<_>>(),
            ["b"]
        );
        assert_eq!(s.get_vm("a").unwrap().unwrap().state, VmState::Deleted);
        assert!(matches!(
            s.set_vm_state("zz", VmState::Running, None),
            Err(StoreError::NotFound(_))
        ));
    }

    #[test]
    fn database_files_are_private_and_loose_modes_are_fixed_at_open() {
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("storage");
        let db = root.join("rds.db");
        {
            let s = SqliteStore::open(&db).unwrap();
            s.insert_vm(&vm("a", VmState::Running)).unwrap();
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
        assert_eq!(s.get_vm("a").unwrap().unwrap().state, VmState::Running);
        assert_eq!((mode(&root), mode(&db)), (0o700, 0o600));
    }

    #[test]
    fn deleting_is_stored_and_still_counts_as_live() {
        let s = SqliteStore::open_in_memory().unwrap();
        s.insert_vm(&vm("a", VmState::Stopped)).unwrap();
        s.set_vm_state("a", VmState::Deleting, None).unwrap();
        assert_eq!(s.get_vm("a").unwrap().unwrap().state, VmState::Deleting);
        assert_eq!(s.list_vms().unwrap().len(), 1, "a VM being deleted is listed until it is gone");
        assert_eq!(s.count_live_vms().unwrap(), 1);
    }

    #[test]
    fn net_slots_are_unique_freed_and_hidden_for_deleted_vms() {
        let s = SqliteStore::open_in_memory().unwrap();
        s.insert_vm(&vm("a", VmState::Running)).unwrap();
        s.insert_vm(&vm("b", VmState::Running)).unwrap();
        assert_eq!(s.vm_network("a").unwrap(), Some(VmNetworkRecord::default()));
        assert_eq!(s.vm_network("zz").unwrap(), None);
        s.set_vm_net_slot("a", Some(3)).unwrap();
        s.set_vm_net_slot("b", Some(0)).unwrap();
        assert_eq!(s.used_net_slots().unwrap(), [0, 3]);
        assert!(
            s.set_vm_net_slot("b", Some(3)).is_err(),
            "a slot held by another VM must be refused"
        );
        s.set_vm_egress_policy("a", true, r#"{"outboundInternet":true}"#)
            .unwrap();
        let a = s.vm_network("a").unwrap().unwrap();
        assert_eq!(a.net_slot, Some(3));
        assert_eq!(a.egress_policy_json.as_deref(), Some(r#"{"outboundInternet":true}"#));
        assert!(s.get_vm("a").unwrap().unwrap().outbound_internet);
        // A deleted VM's slot no longer counts, and freeing it lets another VM take it.
        s.set_vm_state("a", VmState::Deleted, None).unwrap();
        assert_eq!(s.used_net_slots().unwrap(), [0]);
        s.set_vm_net_slot("a", None).unwrap();
        s.set_vm_net_slot("b", Some(3)).unwrap();
        assert_eq!(s.used_net_slots().unwrap(), [3]);
        assert!(matches!(
            s.set_vm_net_slot("zz", Some(1)),
            Err(StoreError::NotFound(_))
        ));
    }

    #[test]
    fn reopening_a_file_keeps_data_and_does_not_rerun_migrations() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/rds.db");
        SqliteStore::open(&path)
            .unwrap()
            .insert_vm(&vm("a", VmState::Running))
            .unwrap();
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.get_vm("a").unwrap().unwrap().state, VmState::Running);
        let v: i64 = s
            .conn()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, migrations::LATEST);
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rds.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch("PRAGMA user_version = 999")
            .unwrap();
        assert!(matches!(
            SqliteStore::open(&path),
            Err(StoreError::TooNew { found: 999, .. })
        ));
    }

    #[test]
    fn exec_logs_are_newest_first_with_has_more() {
        let s = SqliteStore::open_in_memory().unwrap();
        for i in 0..3 {
            s.insert_exec_log(&ExecLogRecord {
                id: format!("e{i}"),
                vm_id: "v".into(),
                kind: "exec".into(),
                exec_id: None,
                input: serde_json::json!({"cmd": "true", "envKeys": ["A"]}),
                exit_code: Some(0),
                duration_ms: 3,
                output_preview: String::new(),
                created_at: 1000 + i,
            })
            .unwrap();
        }
        let (rows, more) = s.list_exec_logs("v", 2).unwrap();
        assert_eq!(
            rows.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["e2", "e1"]
        );
        assert!(more);
        let (rows, more) = s.list_exec_logs("v", 5).unwrap();
        assert_eq!(rows.len(), 3);
        assert!(!more);
    }

    #[test]
    fn revoked_and_expired_keys_are_not_active() {
        let s = SqliteStore::open_in_memory().unwrap();
        let key = |id: &str, expires_at| ApiKeyRecord {
            id: id.into(),
            name: id.into(),
            prefix: "rds_x".into(),
            hash: format!("h{id}"),
            created_at: 1,
            expires_at,
            revoked_at: None,
        };
        s.insert_api_key(&key("live", None)).unwrap();
        s.insert_api_key(&key("old", Some(50))).unwrap();
        assert_eq!(s.active_api_keys(100).unwrap().len(), 1);
        assert_eq!(s.revoke_all_api_keys(100).unwrap(), 2);
        assert!(s.active_api_keys(100).unwrap().is_empty());
    }

    #[test]
    fn peer_links_upsert_sync_and_delete() {
        let s = SqliteStore::open_in_memory().unwrap();
        let link = PeerLinkRecord {
            consumer_vm_id: "c".into(),
            alias: "weather".into(),
            provider_vm_id: "p".into(),
            source_mode: "hidden".into(),
            manifest_json: None,
            sync_status: "pending".into(),
            sync_message: None,
            synced_at: None,
        };
        s.upsert_peer_link(&link).unwrap();
        s.upsert_peer_link(&PeerLinkRecord { source_mode: "mirror".into(), ..link.clone() }).unwrap();
        s.set_peer_sync("c", "weather", "synced", None, Some("{}")).unwrap();
        let got = s.get_peer_link("c", "weather").unwrap().unwrap();
        assert_eq!((got.source_mode.as_str(), got.sync_status.as_str()), ("mirror", "synced"));
        assert_eq!(s.list_peer_links("c").unwrap().len(), 1);
        assert!(s.delete_peer_link("c", "weather").unwrap());
        assert!(!s.delete_peer_link("c", "weather").unwrap());
    }

    #[test]
    fn peer_calls_are_listed_for_consumer_and_provider() {
        let s = SqliteStore::open_in_memory().unwrap();
        for (i, consumer) in ["c1", "c2"].iter().enumerate() {
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
            .unwrap();
        }
        assert_eq!(s.list_peer_calls(Some("c1"), 10).unwrap().len(), 1);
        assert_eq!(s.list_peer_calls(Some("p"), 10).unwrap().len(), 2);
        assert_eq!(s.list_peer_calls(None, 10).unwrap()[0].id, "call-1");
    }

    #[test]
    fn secrets_keep_key_names_beside_the_sealed_blob() {
        let s = SqliteStore::open_in_memory().unwrap();
        s.insert_vm(&vm("a", VmState::Running)).unwrap();
        s.set_vm_secrets("a", Some(b"sealed"), &["TOKEN".into()]).unwrap();
        assert_eq!(s.vm_secret_keys("a").unwrap(), ["TOKEN"]);
        assert_eq!(s.get_vm("a").unwrap().unwrap().secret_env_ciphertext.as_deref(), Some(&b"sealed"[..]));
    }

    #[test]
    fn images_record_parts_and_manifest_and_delete() {
        let s = SqliteStore::open_in_memory().unwrap();
        s.insert_image(&ImageRecord::new("img-a".into(), "a".into(), "".into(), 1)).unwrap();
        s.insert_image(&ImageRecord::new("img-b".into(), "b".into(), "d".into(), 2)).unwrap();
        s.set_image_part("img-a", ImagePart::Rootfs, 4096, 10).unwrap();
        s.set_image_part("img-a", ImagePart::Kernel, 64, 11).unwrap();
        s.set_image_manifest("img-a", Some("{}")).unwrap();
        let a = s.get_image("img-a").unwrap().unwrap();
        assert_eq!((a.rootfs_bytes, a.rootfs_uploaded_at), (Some(4096), Some(10)));
        assert_eq!((a.kernel_bytes, a.initrd_bytes), (Some(64), None));
        assert_eq!(a.manifest_json.as_deref(), Some("{}"));
        let ids: Vec<_> = s.list_images().unwrap().into_iter().map(|i| i.id).collect();
        assert_eq!(ids, ["img-a", "img-b"]);
        assert!(matches!(
            s.set_image_part("img-x", ImagePart::Initrd, 1, 1),
            Err(StoreError::NotFound(_))
        ));
        assert!(s.delete_image("img-a").unwrap());
        assert!(!s.delete_image("img-a").unwrap());
        assert!(s.get_image("img-a").unwrap().is_none());
    }

    #[test]
    fn vms_using_an_image_are_counted_until_deleted() {
        let s = SqliteStore::open_in_memory().unwrap();
        let mut a = vm("a", VmState::Stopped);
        a.image_id = Some("img-1".into());
        let mut b = vm("b", VmState::Running);
        b.image_id = Some("img-1".into());
        s.insert_vm(&a).unwrap();
        s.insert_vm(&b).unwrap();
        s.insert_vm(&vm("c", VmState::Running)).unwrap();
        assert_eq!(s.count_live_vms_with_image("img-1").unwrap(), 2);
        s.set_vm_state("a", VmState::Deleted, None).unwrap();
        assert_eq!(s.count_live_vms_with_image("img-1").unwrap(), 1);
        assert_eq!(s.count_live_vms_with_image("img-2").unwrap(), 0);
    }

    #[test]
    fn settings_upsert_and_remove() {
        let s = SqliteStore::open_in_memory().unwrap();
        assert_eq!(s.get_setting("k").unwrap(), None);
        s.set_setting("k", Some("1")).unwrap();
        s.set_setting("k", Some("2")).unwrap();
        assert_eq!(s.get_setting("k").unwrap().as_deref(), Some("2"));
        s.set_setting("k", None).unwrap();
        assert_eq!(s.get_setting("k").unwrap(), None);
    }

    #[test]
    fn events_keep_meta_json() {
        let s = SqliteStore::open_in_memory().unwrap();
        s.insert_event(&NewEvent {
            kind: "vm.created".into(),
            entity_type: Some("vm".into()),
            entity_id: Some("a".into()),
            message: "VM created".into(),
            meta: Some(serde_json::json!({"cpu": 1})),
        })
        .unwrap();
        let ev = s.list_events(10).unwrap();
        assert_eq!(ev[0].meta, Some(serde_json::json!({"cpu": 1})));
    }
}
