//! The API keys `rds serve` accepts: `API_KEY` from the environment, or one generated on first start
//! and stored only as its SHA-256.

use rand::RngCore;
use rds_store::{now_ms, ApiKeyRecord, Store, StoreResult};

use crate::auth::{hash_key, ApiKeyRing};

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
            })
            .await?;
        notice = KeyNotice::Generated(key);
    }
    let mut hashes: Vec<_> =
        store.active_api_keys(now).await?.iter().filter_map(|k| hex::decode(&k.hash).ok()?.try_into().ok()).collect();
    if let Some(k) = env_key {
        hashes.push(hash_key(k));
    }
    Ok((ApiKeyRing::new(hashes), notice))
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
