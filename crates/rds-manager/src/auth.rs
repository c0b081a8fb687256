//! `X-API-Key` authentication and per-key rate limiting for `/v1` routes.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::rate_limit::Route;
use crate::{ApiError, AppState};

/// Header carrying the key.
pub const API_KEY_HEADER: &str = "x-api-key";

/// SHA-256 of a key; what is stored and compared.
pub type KeyHash = [u8; 32];

/// Hashes a presented or generated key.
pub fn hash_key(key: &str) -> KeyHash {
    Sha256::digest(key.as_bytes()).into()
}

/// How often a stored key's last use is written to the store, at most.
const TOUCH_EVERY_MS: i64 = 60_000;

/// The accepted keys: `API_KEY` from the environment and the stored keys, kept current as keys
/// are created and revoked through the API. Clones share one ring.
#[derive(Debug, Clone, Default)]
pub struct ApiKeyRing(Arc<RwLock<Vec<RingKey>>>);

#[derive(Debug)]
struct RingKey {
    hash: KeyHash,
    /// The stored key's id; `None` for `API_KEY`.
    id: Option<String>,
    expires_at: Option<i64>,
    /// When its use was last written to the store (Unix ms).
    last_touch: AtomicI64,
}

/// A presented key that was accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub hash: KeyHash,
    /// The stored key's id, when its last use should be recorded now.
    pub touch: Option<String>,
}

impl ApiKeyRing {
    /// A ring accepting exactly these hashes (keys without an id or expiry).
    pub fn new(hashes: Vec<KeyHash>) -> Self {
        let ring = ApiKeyRing::default();
        for hash in hashes {
            ring.add(hash, None, None);
        }
        ring
    }

    /// Accepts `hash` from now on (a stored key with `id`, until `expires_at`).
    pub fn add(&self, hash: KeyHash, id: Option<String>, expires_at: Option<i64>) {
        let key = RingKey { hash, id, expires_at, last_touch: AtomicI64::new(0) };
        self.0.write().unwrap_or_else(|p| p.into_inner()).push(key);
    }

    /// Stops accepting the stored key `id`.
    pub fn remove(&self, id: &str) {
        self.0.write().unwrap_or_else(|p| p.into_inner()).retain(|k| k.id.as_deref() != Some(id));
    }

    /// Returns the key's hash when it is accepted.
    pub fn verify(&self, presented: &str) -> Option<KeyHash> {
        self.verify_at(presented, rds_store::now_ms()).map(|v| v.hash)
    }

    /// The accepted key at `now` (not expired), and whether its use is due to be recorded.
    /// Compares in constant time against every hash, so neither timing nor early exit reveals
    /// which (or whether a) key matched.
    pub fn verify_at(&self, presented: &str, now: i64) -> Option<Verified> {
        let h = hash_key(presented);
        let keys = self.0.read().unwrap_or_else(|p| p.into_inner());
        let mut found = subtle::Choice::from(0u8);
        let mut matched = None;
        for (i, known) in keys.iter().enumerate() {
            let eq = known.hash.ct_eq(&h);
            found |= eq;
            // Which key matched is no secret from a caller who holds that key.
            if bool::from(eq) {
                matched = Some(i);
            }
        }
        if !bool::from(found) {
            return None;
        }
        let key = &keys[matched?];
        if key.expires_at.is_some_and(|at| at <= now) {
            return None;
        }
        let touch = key.id.as_ref().filter(|_| {
            let last = key.last_touch.load(Ordering::Relaxed);
            now - last >= TOUCH_EVERY_MS
                && key.last_touch.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        });
        Some(Verified { hash: h, touch: touch.cloned() })
    }
}

/// Middleware: 401 without a valid key, 429 when the key's rate for this route is exhausted;
/// admitted answers carry the `x-ratelimit-*` headers of the budget they counted against.
pub async fn require_api_key(State(state): State<AppState>, req: Request, next: Next) -> Result<Response, ApiError> {
    let key = req.headers().get(API_KEY_HEADER).and_then(|v| v.to_str().ok()).ok_or(ApiError::Unauthorized)?;
    let now = rds_store::now_ms();
    let verified = state.keys.verify_at(key, now).ok_or(ApiError::Unauthorized)?;
    if let Some(id) = verified.touch {
        let store = state.store.clone();
        tokio::spawn(async move {
            if let Err(e) = store.touch_api_key(&id, now).await {
                tracing::debug!(key_id = id, "could not record an API key's use: {e}");
            }
        });
    }
    let route = req.extensions().get::<MatchedPath>().and_then(|p| Route::of(req.method(), p.as_str()));
    let client = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    let allowance = state.limiter.check(&verified.hash, route, client)?;
    let mut resp = next.run(req).await;
    if let Some(a) = allowance {
        a.write(resp.headers_mut());
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_accepts_only_known_keys() {
        let ring = ApiKeyRing::new(vec![hash_key("rds_one"), hash_key("rds_two")]);
        assert_eq!(ring.verify("rds_two"), Some(hash_key("rds_two")));
        assert_eq!(ring.verify("rds_three"), None);
        assert_eq!(ring.verify(""), None);
        assert_eq!(ApiKeyRing::default().verify("rds_one"), None);
    }

    #[test]
    fn stored_keys_expire_are_removed_and_are_touched_once_a_minute() {
        let ring = ApiKeyRing::new(vec![hash_key("rds_env")]);
        ring.add(hash_key("rds_stored"), Some("k1".into()), Some(10_000_000));
        let v = ring.verify_at("rds_stored", 1_000_000).unwrap();
        assert_eq!(v.touch.as_deref(), Some("k1"));
        assert_eq!(ring.verify_at("rds_stored", 1_000_001).unwrap().touch, None, "touched a moment ago");
        assert_eq!(ring.verify_at("rds_stored", 1_060_000).unwrap().touch.as_deref(), Some("k1"));
        assert_eq!(ring.verify_at("rds_env", 1_000_000).unwrap().touch, None, "API_KEY has no record");
        assert!(ring.verify_at("rds_stored", 10_000_000).is_none(), "expired");
        let clone = ring.clone();
        clone.remove("k1");
        assert!(ring.verify_at("rds_stored", 1_000_000).is_none(), "clones share the ring");
        assert!(ring.verify("rds_env").is_some());
    }
}
