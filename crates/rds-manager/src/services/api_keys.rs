//! The API keys `rds serve` accepts: `API_KEY` from the environment, or one generated on first start
//! and stored only as its SHA-256.

use rand::RngCore;
use rds_store::{now_ms, ApiKeyRecord, Store, StoreResult};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::{hash_key, ApiKeyRing};
use crate::{ApiError, AppState};

/// What `rds serve` should tell the operator about keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyNotice {
    /// `API_KEY` is set (other stored keys stay valid).
    FromEnv,
    /// A key was generated now; this is the only time it is shown.
    Generated(String),
    /// A stored key exists and was not shown.
    Existing,
}

/// Makes sure at least one key is accepted and returns the ring of accepted hashes.
/// `rotate` revokes every stored key and generates a fresh one.
pub async fn ensure_keys(
    store: &dyn Store,
    env_key: Option<&str>,
    rotate: bool,
) -> StoreResult<(ApiKeyRing, KeyNotice)> {
    let now = now_ms();
    if rotate {
        store.revoke_all_api_keys(now).await?;
    }
    let mut notice = match (env_key, rotate) {
        (Some(_), false) => KeyNotice::FromEnv,
        _ => KeyNotice::Existing,
    };
    if store.active_api_keys(now).await?.is_empty() && (env_key.is_none() || rotate) {
        let key = generate_key();
        store
            .insert_api_key(&ApiKeyRecord {
                id: uuid::Uuid::new_v4().to_string(),
                name: "default".into(),
                prefix: key.chars().take(8).collect(),
                hash: hex::encode(hash_key(&key)),
                created_at: now,
                expires_at: None,
                revoked_at: None,
                last_used_at: None,
            })
            .await?;
        notice = KeyNotice::Generated(key);
    }
    let ring = ApiKeyRing::default();
    for k in store.active_api_keys(now).await? {
        if let Some(hash) = hex::decode(&k.hash).ok().and_then(|h| h.try_into().ok()) {
            ring.add(hash, Some(k.id), k.expires_at);
        }
    }
    if let Some(k) = env_key {
        ring.add(hash_key(k), None, None);
    }
    Ok((ring, notice))
}

/// Most keys active at once (beyond it a create is a 409).
pub const MAX_ACTIVE_KEYS: usize = 256;
/// Longest lifetime a key may be given.
pub const MAX_EXPIRES_IN_DAYS: u32 = 3650;

/// A managed key as the API shows it (never its hash).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyView {
    pub id: String,
    pub name: String,
    /// Its first characters, to recognise it.
    pub prefix: String,
    /// Unix milliseconds.
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    /// Last request it authenticated (recorded about once a minute).
    pub last_used_at: Option<i64>,
}

impl From<ApiKeyRecord> for ApiKeyView {
    fn from(k: ApiKeyRecord) -> Self {
        ApiKeyView {
            id: k.id,
            name: k.name,
            prefix: k.prefix,
            created_at: k.created_at,
            expires_at: k.expires_at,
            revoked_at: k.revoked_at,
            last_used_at: k.last_used_at,
        }
    }
}

/// `POST /v1/api-keys` body.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateApiKeyRequest {
    /// What the key is for (1–64 characters, not blank, no control characters).
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*[^\\s\\u0000-\\u001F\\u007F-\\u009F][^\\u0000-\\u001F\\u007F-\\u009F]*$"
    )]
    pub name: String,
    /// Days until it stops working (1–3650); none: until revoked.
    #[serde(default, deserialize_with = "rds_proto::coerce::opt_u32")]
    #[schema(minimum = 1, maximum = 3650)]
    pub expires_in_days: Option<u32>,
}

/// A key just created: the only time `key` itself is shown.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreatedApiKey {
    #[serde(flatten)]
    pub view: ApiKeyView,
    /// The key: send it as `X-API-Key`. Only its hash is kept; it cannot be shown again.
    pub key: String,
}

/// Creates a key, stores its hash and accepts it from now on.
pub async fn create(state: &AppState, req: CreateApiKeyRequest) -> Result<CreatedApiKey, ApiError> {
    let name = req.name.trim();
    if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
        return Err(ApiError::BadRequest("invalid field `name`: 1 to 64 characters, no control characters".into()));
    }
    let now = now_ms();
    let expires_at = match req.expires_in_days {
        Some(d) if d == 0 || d > MAX_EXPIRES_IN_DAYS => {
            return Err(ApiError::BadRequest(format!(
                "invalid field `expiresInDays`: must be from 1 to {MAX_EXPIRES_IN_DAYS}"
            )))
        }
        Some(d) => Some(now + i64::from(d) * 86_400_000),
        None => None,
    };
    if state.store.active_api_keys(now).await?.len() >= MAX_ACTIVE_KEYS {
        return Err(ApiError::Conflict(format!("{MAX_ACTIVE_KEYS} keys are active; revoke one first")));
    }
    let key = generate_key();
    let hash = hash_key(&key);
    let record = ApiKeyRecord {
        id: uuid::Uuid::new_v4().to_string(),
        name: name.to_string(),
        prefix: key.chars().take(8).collect(),
        hash: hex::encode(hash),
        created_at: now,
        expires_at,
        revoked_at: None,
        last_used_at: None,
    };
    state.store.insert_api_key(&record).await?;
    state.keys.add(hash, Some(record.id.clone()), expires_at);
    Ok(CreatedApiKey { view: record.into(), key })
}

/// Every stored key, newest first (`API_KEY` from the environment is not one).
pub async fn list(state: &AppState) -> Result<Vec<ApiKeyView>, ApiError> {
    Ok(state.store.list_api_keys().await?.into_iter().map(ApiKeyView::from).collect())
}

/// Revokes a stored key: refused from the next request on.
pub async fn revoke(state: &AppState, id: &str) -> Result<(), ApiError> {
    state.store.revoke_api_key(id, now_ms()).await.map_err(|e| match e {
        rds_store::StoreError::NotFound(_) => ApiError::NotFound(format!("no active API key `{id}`")),
        other => other.into(),
    })?;
    state.keys.remove(id);
    Ok(())
}

/// A new key: `rds_` + 32 random bytes, base64url.
pub fn generate_key() -> String {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("rds_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rds_store::SqliteStore;

    #[tokio::test]
    async fn first_start_generates_then_later_starts_reuse_and_rotation_replaces() {
        let store = SqliteStore::open_in_memory().unwrap();
        let (ring, notice) = ensure_keys(&store, None, false).await.unwrap();
        let KeyNotice::Generated(key) = notice else { panic!("expected a generated key") };
        assert!(key.starts_with("rds_"));
        assert!(ring.verify(&key).is_some());
        // Only the hash is stored.
        assert!(store.active_api_keys(now_ms()).await.unwrap().iter().all(|k| k.hash != key && !k.hash.contains(&key)));

        let (ring, notice) = ensure_keys(&store, None, false).await.unwrap();
        assert_eq!(notice, KeyNotice::Existing);
        assert!(ring.verify(&key).is_some());

        let (ring, notice) = ensure_keys(&store, None, true).await.unwrap();
        let KeyNotice::Generated(fresh) = notice else { panic!("expected a rotated key") };
        assert!(ring.verify(&fresh).is_some());
        assert!(ring.verify(&key).is_none());
    }

    #[tokio::test]
    async fn env_key_is_accepted_without_generating_one() {
        let store = SqliteStore::open_in_memory().unwrap();
        let (ring, notice) = ensure_keys(&store, Some("an-env-key-of-length"), false).await.unwrap();
        assert_eq!(notice, KeyNotice::FromEnv);
        assert!(ring.verify("an-env-key-of-length").is_some());
        assert!(store.active_api_keys(now_ms()).await.unwrap().is_empty());
    }
}
