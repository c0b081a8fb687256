//! `X-API-Key` authentication and per-key rate limiting for `/v1` routes.

use axum::extract::{MatchedPath, Request, State};
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

/// The set of accepted key hashes, fixed at startup (env `API_KEY` plus stored keys).
#[derive(Debug, Clone, Default)]
pub struct ApiKeyRing {
    hashes: Vec<KeyHash>,
}

impl ApiKeyRing {
    /// A ring accepting exactly these hashes.
    pub fn new(hashes: Vec<KeyHash>) -> Self {
        ApiKeyRing { hashes }
    }

    /// Returns the key's hash when it is accepted. Compares in constant time against every
    /// hash, so neither timing nor early exit reveals which (or whether a) key matched.
    pub fn verify(&self, presented: &str) -> Option<KeyHash> {
        let h = hash_key(presented);
        let mut found = subtle::Choice::from(0u8);
        for known in &self.hashes {
            found |= known.ct_eq(&h);
        }
        bool::from(found).then_some(h)
    }
}

/// Middleware: 401 without a valid key, 429 when the key's rate for this route is exhausted;
/// admitted answers carry the `x-ratelimit-*` headers of the budget they counted against.
pub async fn require_api_key(State(state): State<AppState>, req: Request, next: Next) -> Result<Response, ApiError> {
    let key = req.headers().get(API_KEY_HEADER).and_then(|v| v.to_str().ok()).ok_or(ApiError::Unauthorized)?;
    let hash = state.keys.verify(key).ok_or(ApiError::Unauthorized)?;
    let route = req.extensions().get::<MatchedPath>().and_then(|p| Route::of(req.method(), p.as_str()));
    let allowance = state.limiter.check(&hash, route)?;
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
}
