//! How long `apply_policy` takes, for the bench suite.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::network::{NetError, Network};
use crate::policy::EgressPolicy;
use crate::pool::Slot;

/// Latency summary of repeated `apply_policy` calls.
#[derive(Debug, Clone, Serialize)]
pub struct ApplyBench {
    /// How many applies were timed.
    pub iterations: usize,
    /// Median, in milliseconds.
    pub p50_ms: f64,
    /// 90th percentile, in milliseconds.
    pub p90_ms: f64,
    /// Slowest, in milliseconds.
    pub max_ms: f64,
}

/// Applies `policies` round-robin `iterations` times to one attached VM and reports latencies.
pub async fn bench_apply(
    network: &Network,
    vm_id: &str,
    slot: &Slot,
    policies: &[EgressPolicy],
    iterations: usize,
) -> Result<ApplyBench, NetError> {
    let mut samples: Vec<Duration> = Vec::with_capacity(iterations);
    for i in 0..iterations {
        let policy = &policies[i % policies.len().max(1)];
        let started = Instant::now();
        network.apply_policy(vm_id, slot, policy).await?;
        samples.push(started.elapsed());
    }
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    let mut at = |q: f64| rds_testkit::percentile(&mut ms, q);
    Ok(ApplyBench { iterations, p50_ms: at(0.5), p90_ms: at(0.9), max_ms: at(1.0) })
}
