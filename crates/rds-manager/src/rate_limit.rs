//! Token bucket per API key: `RATE_LIMIT_PER_MIN` burst, refilled continuously.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use crate::auth::KeyHash;
use crate::ApiError;

/// Per-key token buckets.
pub struct RateLimiter {
    per_min: u32,
    buckets: Mutex<HashMap<KeyHash, Bucket>>,
}

struct Bucket {
    tokens: f64,
    refilled: Instant,
}

impl RateLimiter {
    /// A limiter allowing `per_min` requests per minute per key; 0 disables it.
    pub fn new(per_min: u32) -> Self {
        RateLimiter { per_min, buckets: Mutex::new(HashMap::new()) }
    }

    /// Takes one token for `key` or says how long to wait.
    pub fn check(&self, key: &KeyHash) -> Result<(), ApiError> {
        self.check_at(key, Instant::now())
    }

    fn check_at(&self, key: &KeyHash, now: Instant) -> Result<(), ApiError> {
        if self.per_min == 0 {
            return Ok(());
        }
        let capacity = self.per_min as f64;
        let per_sec = capacity / 60.0;
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let b = buckets.entry(*key).or_insert(Bucket { tokens: capacity, refilled: now });
        let elapsed = now.saturating_duration_since(b.refilled).as_secs_f64();
        b.tokens = (b.tokens + elapsed * per_sec).min(capacity);
        b.refilled = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            let wait = ((1.0 - b.tokens) / per_sec).ceil().max(1.0) as u64;
            Err(ApiError::RateLimited { retry_after_secs: wait })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_allows_burst_then_refuses_then_refills() {
        let l = RateLimiter::new(3);
        let k = [1u8; 32];
        let t0 = Instant::now();
        for _ in 0..3 {
            l.check_at(&k, t0).unwrap();
        }
        match l.check_at(&k, t0) {
            Err(ApiError::RateLimited { retry_after_secs }) => assert_eq!(retry_after_secs, 20),
            other => panic!("expected rate limit, got {other:?}"),
        }
        // Another key has its own bucket.
        l.check_at(&[2u8; 32], t0).unwrap();
        // 20 s refills one token at 3/min.
        l.check_at(&k, t0 + Duration::from_secs(20)).unwrap();
    }

    #[test]
    fn zero_disables_limiting() {
        let l = RateLimiter::new(0);
        for _ in 0..1000 {
            l.check(&[0u8; 32]).unwrap();
        }
    }
}
