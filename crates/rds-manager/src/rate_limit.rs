//! Request rate limits: a budget of requests per minute, counted in fixed one-minute windows as
//! the original's limiter counts them (a window opens with a key's first request; once its
//! budget is spent, requests are refused until the window ends).
//!
//! The API's limits are the original's defaults: one budget per client for most routes
//! (`RATE_LIMIT_PER_MIN`, 120), and a budget of its own for each expensive route instead
//! (`POST /v1/vms` 30, exec 300, each run route 60, upload 30, download 60 per minute): a request
//! to such a route counts against that route's budget only, as the original's per-route limits
//! replaced its global one. Unlike the original, which counted per client IP (so every client
//! behind a proxy shared one budget), a budget belongs to an API key; within it, one client
//! address may use only `RATE_LIMIT_CLIENT_SHARE_PERCENT` (50) of each budget while other
//! addresses use it too, so a caller in a tight loop cannot starve the others sharing its key (a
//! lone caller keeps the whole budget, as with the original).

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue, Method};

use crate::auth::KeyHash;
use crate::config::RateLimits;
use crate::ApiError;

/// A budget: requests per minute (0 = unlimited) and the setting that chose it, named in 429s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// Requests per minute; 0 disables the limit.
    pub per_min: u32,
    /// The environment variable that sets it.
    pub setting: &'static str,
}

/// Where an admitted request stands: sent as `x-ratelimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowance {
    /// Requests per minute of the budget.
    pub limit: u32,
    /// Requests left right now.
    pub remaining: u32,
    /// Seconds until the window ends and the whole budget is available again.
    pub reset_secs: u64,
}

impl Allowance {
    /// Adds `x-ratelimit-limit`, `x-ratelimit-remaining` and `x-ratelimit-reset` (the original's
    /// headers) to `headers`.
    pub fn write(&self, headers: &mut HeaderMap) {
        headers.insert("x-ratelimit-limit", HeaderValue::from(self.limit));
        headers.insert("x-ratelimit-remaining", HeaderValue::from(self.remaining));
        headers.insert("x-ratelimit-reset", HeaderValue::from(self.reset_secs));
    }
}

/// Length of a counting window.
const WINDOW: Duration = Duration::from_secs(60);

struct Window {
    opened: Instant,
    used: u32,
}

/// Windows kept before ended ones are dropped (client addresses can be many).
const PRUNE_ABOVE: usize = 10_000;

/// Counting windows by key, all with the limit the caller passes.
struct Buckets<K>(Mutex<HashMap<K, Window>>);

impl<K: Hash + Eq> Buckets<K> {
    fn new() -> Self {
        Buckets(Mutex::new(HashMap::new()))
    }

    /// Counts one request of `key`: `Ok(None)` when `limit` is disabled, else the allowance left,
    /// or a 429 saying how long to wait.
    fn take(&self, key: K, limit: Limit, now: Instant) -> Result<Option<Allowance>, ApiError> {
        if limit.per_min == 0 {
            return Ok(None);
        }
        let mut windows = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if windows.len() > PRUNE_ABOVE {
            windows.retain(|_, w| now.saturating_duration_since(w.opened) < WINDOW);
        }
        let w = windows.entry(key).or_insert(Window { opened: now, used: 0 });
        if now.saturating_duration_since(w.opened) >= WINDOW {
            *w = Window { opened: now, used: 0 };
        }
        let left = WINDOW.saturating_sub(now.saturating_duration_since(w.opened));
        let reset_secs = left.as_secs_f64().ceil().max(1.0) as u64;
        if w.used < limit.per_min {
            w.used += 1;
            Ok(Some(Allowance { limit: limit.per_min, remaining: limit.per_min - w.used, reset_secs }))
        } else {
            Err(ApiError::RateLimited {
                retry_after_secs: reset_secs,
                limit: limit.per_min,
                setting: limit.setting,
                reset_secs,
                client_share: None,
            })
        }
    }
}

/// One limit for every key (the peer bridge's per-link limit).
pub struct RateLimiter {
    limit: Limit,
    buckets: Buckets<KeyHash>,
}

impl RateLimiter {
    /// A limiter allowing `limit.per_min` requests per minute per key; 0 disables it.
    pub fn new(limit: Limit) -> Self {
        RateLimiter { limit, buckets: Buckets::new() }
    }

    /// Takes one token for `key` or says how long to wait.
    pub fn check(&self, key: &KeyHash) -> Result<(), ApiError> {
        self.buckets.take(*key, self.limit, Instant::now()).map(|_| ())
    }
}

/// The routes with a budget of their own; every other protected route uses the global one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    /// `POST /v1/vms`.
    CreateVm,
    /// `POST /v1/vms/{id}/exec`.
    Exec,
    /// `POST /v1/vms/{id}/run-ts`.
    RunTs,
    /// `POST /v1/vms/{id}/run-js`.
    RunJs,
    /// `POST /v1/vms/{id}/run-python` (ours; limited like the other run routes).
    RunPython,
    /// `POST /v1/vms/{id}/files/upload`.
    Upload,
    /// `GET /v1/vms/{id}/files/download`.
    Download,
}

impl Route {
    /// The route a request matched (`path` as the router declares it, `/v1/vms/{id}/exec`), if it
    /// has a budget of its own.
    pub fn of(method: &Method, path: &str) -> Option<Route> {
        let route = match path {
            "/v1/vms" => Route::CreateVm,
            "/v1/vms/{id}/exec" => Route::Exec,
            "/v1/vms/{id}/run-ts" => Route::RunTs,
            "/v1/vms/{id}/run-js" => Route::RunJs,
            "/v1/vms/{id}/run-python" => Route::RunPython,
            "/v1/vms/{id}/files/upload" => Route::Upload,
            "/v1/vms/{id}/files/download" => return (method == Method::GET).then_some(Route::Download),
            _ => return None,
        };
        (method == Method::POST).then_some(route)
    }

    fn limit(self, limits: &RateLimits) -> Limit {
        let (per_min, setting) = match self {
            Route::CreateVm => (limits.create, "RATE_LIMIT_CREATE_PER_MIN"),
            Route::Exec => (limits.exec, "RATE_LIMIT_EXEC_PER_MIN"),
            Route::RunTs | Route::RunJs | Route::RunPython => (limits.run, "RATE_LIMIT_RUN_PER_MIN"),
            Route::Upload => (limits.upload, "RATE_LIMIT_UPLOAD_PER_MIN"),
            Route::Download => (limits.download, "RATE_LIMIT_DOWNLOAD_PER_MIN"),
        };
        Limit { per_min, setting }
    }
}

/// The API's limits per API key: a bucket per (key, route) for the routes with their own budget,
/// one per key for the rest; and within each, a count per client address, capped at its share
/// once a second address uses the same budget in the same window.
pub struct ApiRateLimiter {
    limits: RateLimits,
    buckets: Buckets<(KeyHash, Option<Route>)>,
    clients: Buckets<(KeyHash, Option<Route>, IpAddr)>,
    /// Per (key, route): the window's first client address, and whether another one came since.
    sharing: Mutex<HashMap<(KeyHash, Option<Route>), Sharing>>,
}

struct Sharing {
    opened: Instant,
    first: IpAddr,
    shared: bool,
}

impl ApiRateLimiter {
    /// Limits as configured.
    pub fn new(limits: RateLimits) -> Self {
        ApiRateLimiter { limits, buckets: Buckets::new(), clients: Buckets::new(), sharing: Mutex::new(HashMap::new()) }
    }

    /// Whether more than one client address has used this budget in the current window.
    fn shared(&self, key: (KeyHash, Option<Route>), client: IpAddr, now: Instant) -> bool {
        let mut all = self.sharing.lock().unwrap_or_else(|p| p.into_inner());
        if all.len() > PRUNE_ABOVE {
            all.retain(|_, s| now.saturating_duration_since(s.opened) < WINDOW);
        }
        let s = all.entry(key).or_insert(Sharing { opened: now, first: client, shared: false });
        if now.saturating_duration_since(s.opened) >= WINDOW {
            *s = Sharing { opened: now, first: client, shared: false };
        }
        s.shared |= s.first != client;
        s.shared
    }

    /// Counts a request of `key` from `client` (when known) to `route` (`None`: a route without a
    /// budget of its own). `Ok(None)` when that budget is disabled.
    pub fn check(
        &self,
        key: &KeyHash,
        route: Option<Route>,
        client: Option<IpAddr>,
    ) -> Result<Option<Allowance>, ApiError> {
        self.check_at(key, route, client, Instant::now())
    }

    fn check_at(
        &self,
        key: &KeyHash,
        route: Option<Route>,
        client: Option<IpAddr>,
        now: Instant,
    ) -> Result<Option<Allowance>, ApiError> {
        let limit = match route {
            Some(r) => r.limit(&self.limits),
            None => Limit { per_min: self.limits.global, setting: "RATE_LIMIT_PER_MIN" },
        };
        let share = self.limits.client_share_percent;
        if let (Some(ip), true) = (client, share < 100 && limit.per_min > 0) {
            // Every address's use is counted; it is capped at its share only while another address
            // uses the same budget, so a lone caller keeps the whole of it.
            let per_min = match self.shared((*key, route), ip, now) {
                true => (u64::from(limit.per_min) * u64::from(share)).div_ceil(100).max(1) as u32,
                false => u32::MAX,
            };
            self.clients.take((*key, route, ip), Limit { per_min, ..limit }, now).map_err(|e| match e {
                ApiError::RateLimited { retry_after_secs, limit, setting, reset_secs, .. } => {
                    ApiError::RateLimited { retry_after_secs, limit, setting, reset_secs, client_share: Some(share) }
                }
                other => other,
            })?;
        }
        self.buckets.take((*key, route), limit, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(global: u32, create: u32, exec: u32, run: u32) -> RateLimits {
        RateLimits { global, create, exec, run, upload: 30, download: 60, client_share_percent: 100 }
    }

    #[test]
    fn a_window_allows_its_budget_then_refuses_until_it_ends() {
        let l = RateLimiter::new(Limit { per_min: 3, setting: "X" });
        let k = [1u8; 32];
        let t0 = Instant::now();
        for _ in 0..3 {
            l.buckets.take(k, l.limit, t0).unwrap();
        }
        match l.buckets.take(k, l.limit, t0 + Duration::from_secs(15)) {
            Err(ApiError::RateLimited { retry_after_secs, limit, setting, reset_secs, .. }) => {
                assert_eq!((retry_after_secs, reset_secs, limit, setting), (45, 45, 3, "X"))
            }
            other => panic!("expected rate limit, got {other:?}"),
        }
        // Another key has its own window.
        l.buckets.take([2u8; 32], l.limit, t0).unwrap();
        // Still refused just before the minute is over; a new window after it.
        assert!(l.buckets.take(k, l.limit, t0 + Duration::from_millis(59_900)).is_err());
        let a = l.buckets.take(k, l.limit, t0 + WINDOW).unwrap().unwrap();
        assert_eq!((a.remaining, a.reset_secs), (2, 60));
    }

    #[test]
    fn zero_disables_limiting() {
        let l = RateLimiter::new(Limit { per_min: 0, setting: "X" });
        for _ in 0..1000 {
            l.check(&[0u8; 32]).unwrap();
        }
        let api = ApiRateLimiter::new(limits(0, 0, 0, 0));
        for _ in 0..1000 {
            assert_eq!(api.check(&[0u8; 32], Some(Route::Exec), None).unwrap(), None);
            assert_eq!(api.check(&[0u8; 32], None, None).unwrap(), None);
        }
    }

    #[test]
    fn routes_with_their_own_limit_count_only_against_it() {
        let api = ApiRateLimiter::new(limits(5, 2, 4, 1));
        let (k, t0) = ([7u8; 32], Instant::now());
        for _ in 0..2 {
            api.check_at(&k, Some(Route::CreateVm), None, t0).unwrap();
        }
        match api.check_at(&k, Some(Route::CreateVm), None, t0) {
            Err(ApiError::RateLimited { setting, limit, .. }) => {
                assert_eq!((setting, limit), ("RATE_LIMIT_CREATE_PER_MIN", 2))
            }
            other => panic!("the third create is refused, got {other:?}"),
        }
        // Exec has its own budget, untouched by the creates; the global one too.
        for n in 0..4 {
            let a = api.check_at(&k, Some(Route::Exec), None, t0).unwrap().expect("limited");
            assert_eq!((a.limit, a.remaining), (4, 3 - n));
        }
        assert!(api.check_at(&k, Some(Route::Exec), None, t0).is_err(), "the fifth exec is refused");
        for _ in 0..5 {
            api.check_at(&k, None, None, t0).unwrap();
        }
        assert!(api.check_at(&k, None, None, t0).is_err(), "the sixth other request is refused");
        // Each run route has a bucket of its own, with the same limit.
        api.check_at(&k, Some(Route::RunTs), None, t0).unwrap();
        assert!(api.check_at(&k, Some(Route::RunTs), None, t0).is_err());
        api.check_at(&k, Some(Route::RunJs), None, t0).unwrap();
        api.check_at(&k, Some(Route::RunPython), None, t0).unwrap();
        // Another key is not affected by any of it.
        api.check_at(&[8u8; 32], Some(Route::CreateVm), None, t0).unwrap();
        api.check_at(&[8u8; 32], None, None, t0).unwrap();
    }

    #[test]
    fn allowance_counts_down_and_says_when_the_window_ends() {
        let api = ApiRateLimiter::new(limits(60, 1, 1, 1));
        let (k, t0) = ([3u8; 32], Instant::now());
        let first = api.check_at(&k, None, None, t0).unwrap().unwrap();
        assert_eq!(first, Allowance { limit: 60, remaining: 59, reset_secs: 60 });
        let second = api.check_at(&k, None, None, t0 + Duration::from_millis(10_500)).unwrap().unwrap();
        assert_eq!(second, Allowance { limit: 60, remaining: 58, reset_secs: 50 });
        let mut headers = HeaderMap::new();
        second.write(&mut headers);
        assert_eq!(headers["x-ratelimit-remaining"], "58");
        assert_eq!(headers["x-ratelimit-limit"], "60");
        assert_eq!(headers["x-ratelimit-reset"], "50");
    }

    #[test]
    fn only_the_expensive_routes_have_their_own_budget() {
        assert_eq!(Route::of(&Method::POST, "/v1/vms"), Some(Route::CreateVm));
        assert_eq!(Route::of(&Method::GET, "/v1/vms"), None);
        assert_eq!(Route::of(&Method::POST, "/v1/vms/{id}/exec"), Some(Route::Exec));
        assert_eq!(Route::of(&Method::POST, "/v1/vms/{id}/run-js"), Some(Route::RunJs));
        assert_eq!(Route::of(&Method::POST, "/v1/vms/{id}/files/upload"), Some(Route::Upload));
        assert_eq!(Route::of(&Method::GET, "/v1/vms/{id}/files/download"), Some(Route::Download));
        assert_eq!(Route::of(&Method::POST, "/v1/vms/{id}/start"), None);
        assert_eq!(Route::of(&Method::GET, "/v1/images"), None);
    }

    #[test]
    fn one_client_address_gets_only_its_share_of_a_keys_budget() {
        let mut l = limits(10, 30, 300, 60);
        l.client_share_percent = 50;
        let api = ApiRateLimiter::new(l);
        let (k, t0) = ([9u8; 32], Instant::now());
        let (hog, other): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        // Alone, a caller has the whole budget.
        let lone = ApiRateLimiter::new(l);
        for _ in 0..10 {
            lone.check_at(&k, None, Some(hog), t0).unwrap();
        }
        assert!(matches!(
            lone.check_at(&k, None, Some(hog), t0),
            Err(ApiError::RateLimited { client_share: None, .. })
        ));
        // Shared, it has its share.
        api.check_at(&k, None, Some(other), t0).unwrap();
        for _ in 0..5 {
            api.check_at(&k, None, Some(hog), t0).unwrap();
        }
        let refused = api.check_at(&k, None, Some(hog), t0).unwrap_err();
        assert!(matches!(refused, ApiError::RateLimited { client_share: Some(50), limit: 5, .. }), "{refused:?}");
        assert!(refused.to_string().contains("RATE_LIMIT_CLIENT_SHARE_PERCENT=50"), "{refused}");
        // The hog's refusals cost the key nothing: the other address still has its share.
        for _ in 0..4 {
            api.check_at(&k, None, Some(other), t0).unwrap();
        }
        // And the key's budget (10) is now spent for everyone, as before.
        let refused = api.check_at(&k, None, Some("10.0.0.3".parse().unwrap()), t0).unwrap_err();
        assert!(matches!(refused, ApiError::RateLimited { client_share: None, limit: 10, .. }), "{refused:?}");
        // A new window starts unshared again.
        let later = t0 + WINDOW;
        for _ in 0..10 {
            api.check_at(&k, None, Some(hog), later).unwrap();
        }
        // A small budget still lets each address through once.
        let mut l = limits(1, 30, 300, 60);
        l.client_share_percent = 10;
        let small = ApiRateLimiter::new(l);
        small.check_at(&k, None, Some(other), t0).unwrap();
        assert!(matches!(
            small.check_at(&k, None, Some(hog), t0),
            Err(ApiError::RateLimited { client_share: None, .. })
        ));
    }
}
