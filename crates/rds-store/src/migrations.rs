//! Versioned schema migrations, tracked in `PRAGMA user_version`.

use rusqlite::{Connection, TransactionBehavior};

use crate::sqlite::Fail;
use crate::StoreError;

/// Migration `n` (1-based) brings the schema from version `n-1` to `n`. Append only.
pub(crate) const MIGRATIONS: &[&str] = &[
    // 1: initial schema.
    r#"
    CREATE TABLE vms (
        id TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        state_reason TEXT,
        cpu INTEGER NOT NULL,
        mem_mb INTEGER NOT NULL,
        runtime TEXT NOT NULL,
        image_id TEXT,
        handle_json TEXT,
        outbound_internet INTEGER NOT NULL DEFAULT 0,
        allow_ips_json TEXT,
        secret_env_ciphertext BLOB,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    CREATE INDEX vms_state_idx ON vms (state);
    CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        prefix TEXT NOT NULL,
        hash TEXT NOT NULL UNIQUE,
        created_at INTEGER NOT NULL,
        expires_at INTEGER,
        revoked_at INTEGER
    );
    CREATE TABLE exec_logs (
        id TEXT PRIMARY KEY,
        vm_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        exec_id TEXT,
        input_json TEXT NOT NULL,
        exit_code INTEGER,
        duration_ms INTEGER NOT NULL,
        output_preview TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE INDEX exec_logs_vm_idx ON exec_logs (vm_id, created_at);
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        created_at INTEGER NOT NULL,
        kind TEXT NOT NULL,
        entity_type TEXT,
        entity_id TEXT,
        message TEXT NOT NULL,
        meta_json TEXT
    );
    "#,
    // 2: provider/consumer links, the bridge's audit log, secret key names.
    r#"
    ALTER TABLE vms ADD COLUMN secret_env_keys_json TEXT;
    CREATE TABLE peer_links (
        consumer_vm_id TEXT NOT NULL,
        alias TEXT NOT NULL,
        provider_vm_id TEXT NOT NULL,
        source_mode TEXT NOT NULL,
        manifest_json TEXT,
        sync_status TEXT NOT NULL DEFAULT 'pending',
        sync_message TEXT,
        synced_at INTEGER,
        PRIMARY KEY (consumer_vm_id, alias)
    );
    CREATE INDEX peer_links_provider_idx ON peer_links (provider_vm_id);
    CREATE TABLE peer_calls (
        id TEXT PRIMARY KEY,
        consumer_vm_id TEXT NOT NULL,
        provider_vm_id TEXT,
        alias TEXT NOT NULL,
        export_name TEXT NOT NULL,
        status INTEGER NOT NULL,
        code TEXT NOT NULL,
        duration_ms INTEGER NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE INDEX peer_calls_consumer_idx ON peer_calls (consumer_vm_id, created_at);
    CREATE INDEX peer_calls_provider_idx ON peer_calls (provider_vm_id, created_at);
    "#,
    // 3: per-VM network slot and egress policy; guest images and manager settings.
    r#"
    ALTER TABLE vms ADD COLUMN net_slot INTEGER;
    ALTER TABLE vms ADD COLUMN egress_policy_json TEXT;
    CREATE UNIQUE INDEX vms_net_slot_idx ON vms (net_slot) WHERE net_slot IS NOT NULL;
    CREATE TABLE images (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        description TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        kernel_bytes INTEGER,
        initrd_bytes INTEGER,
        rootfs_bytes INTEGER,
        kernel_uploaded_at INTEGER,
        initrd_uploaded_at INTEGER,
        rootfs_uploaded_at INTEGER,
        manifest_json TEXT
    );
    CREATE TABLE settings (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    "#,
    // 4: per-VM disk size (the sandbox's /workspace filesystem); earlier VMs keep a directory.
    r#"
    ALTER TABLE vms ADD COLUMN disk_mb INTEGER NOT NULL DEFAULT 1024;
    "#,
    // 5: snapshots; how each VM was provisioned and from which snapshot; warm-pool members.
    r#"
    ALTER TABLE vms ADD COLUMN provision_mode TEXT;
    ALTER TABLE vms ADD COLUMN snapshot_id TEXT;
    ALTER TABLE vms ADD COLUMN pool INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE snapshots (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        content TEXT NOT NULL,
        state TEXT NOT NULL,
        internal INTEGER NOT NULL DEFAULT 0,
        runtime TEXT NOT NULL,
        source_vm_id TEXT,
        image_id TEXT,
        cpu INTEGER NOT NULL,
        mem_mb INTEGER NOT NULL,
        disk_mb INTEGER NOT NULL,
        bytes INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL
    );
    CREATE INDEX snapshots_created_idx ON snapshots (created_at);
    "#,
    // API keys managed through the API: when each was last used.
    r#"
    ALTER TABLE api_keys ADD COLUMN last_used_at INTEGER;
    "#,
];

/// The schema version this build writes.
pub const LATEST: i64 = MIGRATIONS.len() as i64;

/// Applies every pending migration, each in its own `BEGIN IMMEDIATE` transaction with the version
/// bump; the version is read again inside it, so two managers opening one database at once
/// apply each migration once.
pub(crate) fn migrate(conn: &mut Connection) -> Result<(), Fail> {
    loop {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let current: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if current > LATEST {
            return Err(StoreError::TooNew { found: current, known: LATEST }.into());
        }
        let Some(sql) = MIGRATIONS.get(current as usize) else { return Ok(()) };
        tx.execute_batch(sql)?;
        // PRAGMA does not take bound parameters; the value is our own integer.
        tx.execute_batch(&format!("PRAGMA user_version = {}", current + 1))?;
        tx.commit()?;
    }
}
