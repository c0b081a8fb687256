//! Activity events: one row per lifecycle change (never secrets).

use rds_store::NewEvent;

use crate::AppState;

/// Records that something happened to a VM. A failure to record is logged, not fatal.
pub async fn vm_event(
    state: &AppState,
    vm_id: &str,
    kind: &str,
    message: impl Into<String>,
    meta: Option<serde_json::Value>,
) {
    let event = NewEvent {
        kind: kind.to_string(),
        entity_type: Some("vm".into()),
        entity_id: Some(vm_id.to_string()),
        message: message.into(),
        meta,
    };
    if let Err(e) = state.store.insert_event(&event).await {
        tracing::warn!(vm_id, kind, error = %e, "could not record activity event");
    }
}
