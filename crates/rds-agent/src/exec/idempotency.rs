//! `execId` idempotency: a retried request joins (or replays) the first run instead of running twice.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// Default number of remembered execIds.
pub const DEFAULT_CAPACITY: usize = 1024;

/// Remembers the outcome of recent runs by id, bounded to `capacity` entries (oldest finished first).
pub struct IdempotencyCache<T> {
    inner: Arc<Mutex<Entries<T>>>,
    hasher: RandomState,
    capacity: usize,
}

struct Entries<T> {
    by_id: HashMap<String, Entry<T>>,
    order: VecDeque<String>,
}

struct Entry<T> {
    fingerprint: u64,
    outcome: watch::Receiver<Option<T>>,
}

/// What a request with an id gets from the cache.
pub enum Claim<T> {
    /// First time this id is seen: the caller runs it and reports through the [`Completion`].
    New(Completion<T>),
    /// Seen before with the same request: wait on this for the first run's outcome.
    Existing(Outcome<T>),
    /// Seen before with a different request.
    Conflict,
}

/// The first run's promise to report its outcome. Dropping it unfinished forgets the id, so a
/// later retry may run (the command never started).
pub struct Completion<T> {
    id: String,
    sender: Option<watch::Sender<Option<T>>>,
    inner: Arc<Mutex<Entries<T>>>,
}

/// A handle on the first run's outcome.
pub struct Outcome<T>(watch::Receiver<Option<T>>);

impl<T: Clone> Outcome<T> {
    /// Waits for the first run to finish; `None` when it failed before starting.
    pub async fn wait(mut self) -> Option<T> {
        self.0.wait_for(Option::is_some).await.ok().and_then(|v| v.clone())
    }
}

impl<T: Clone> IdempotencyCache<T> {
    /// An empty cache remembering up to `capacity` ids.
    pub fn new(capacity: usize) -> Self {
        IdempotencyCache {
            inner: Arc::new(Mutex::new(Entries { by_id: HashMap::new(), order: VecDeque::new() })),
            hasher: RandomState::new(),
            capacity,
        }
    }

    /// Claims `id` for a request whose canonical form is `request`.
    pub fn claim(&self, id: &str, request: impl Hash) -> Claim<T> {
        let fingerprint = self.hasher.hash_one(request);
        let mut entries = self.inner.lock().expect("idempotency cache poisoned");
        if let Some(entry) = entries.by_id.get(id) {
            return if entry.fingerprint == fingerprint {
                Claim::Existing(Outcome(entry.outcome.clone()))
            } else {
                Claim::Conflict
            };
        }
        entries.evict_to(self.capacity.saturating_sub(1));
        let (sender, receiver) = watch::channel(None);
        entries.by_id.insert(id.to_string(), Entry { fingerprint, outcome: receiver });
        entries.order.push_back(id.to_string());
        Claim::New(Completion { id: id.to_string(), sender: Some(sender), inner: self.inner.clone() })
    }
}

impl<T> Entries<T> {
    /// Drops the oldest finished entries until at most `keep` remain (running ones are kept:
    /// forgetting them would let a retry run the command a second time).
    fn evict_to(&mut self, keep: usize) {
        let mut index = 0;
        while self.by_id.len() > keep && index < self.order.len() {
            let id = &self.order[index];
            let finished = !matches!(self.by_id.get(id), Some(e) if e.outcome.borrow().is_none());
            if finished {
                let id = self.order.remove(index).expect("index in range");
                self.by_id.remove(&id);
            } else {
                index += 1;
            }
        }
    }
}

impl<T> Completion<T> {
    /// Records the outcome for every present and future retry.
    pub fn finish(mut self, value: T) {
        if let Some(sender) = self.sender.take() {
            sender.send_replace(Some(value));
        }
    }
}

impl<T> Drop for Completion<T> {
    fn drop(&mut self) {
        if self.sender.is_some() {
            let mut entries = self.inner.lock().expect("idempotency cache poisoned");
            entries.by_id.remove(&self.id);
            entries.order.retain(|i| i != &self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn retry_gets_first_outcome_and_different_body_conflicts() {
        let cache = IdempotencyCache::<u32>::new(4);
        let Claim::New(done) = cache.claim("a", "req") else { panic!("first claim must be new") };
        let Claim::Existing(waiter) = cache.claim("a", "req") else { panic!("retry must join") };
        assert!(matches!(cache.claim("a", "other"), Claim::Conflict));
        done.finish(7);
        assert_eq!(waiter.wait().await, Some(7));
    }

    #[test]
    fn abandoned_claim_lets_a_retry_run() {
        let cache = IdempotencyCache::<u32>::new(4);
        let Claim::New(done) = cache.claim("a", "req") else { panic!() };
        drop(done);
        assert!(matches!(cache.claim("a", "req"), Claim::New(_)));
    }

    #[test]
    fn oldest_finished_entries_are_evicted_first() {
        let cache = IdempotencyCache::<u32>::new(2);
        let Claim::New(running) = cache.claim("running", 0) else { panic!() };
        let Claim::New(done) = cache.claim("done", 0) else { panic!() };
        done.finish(1);
        let Claim::New(_third) = cache.claim("third", 0) else { panic!() };
        assert!(matches!(cache.claim("running", 0), Claim::Existing(_)), "running entry kept");
        assert!(matches!(cache.claim("done", 0), Claim::New(_)), "finished entry evicted");
        drop(running);
    }
}
