//! The per-VM resolver on `host_ip:53/udp`: answers only what the VM's policy allows, forwards
//! to the upstreams, and teaches nftables the addresses of allowed names.
//!
//! Bounded everywhere: query size, in-flight queries, upstream wait, addresses learned per answer.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{Name, RData};
use tokio::net::UdpSocket;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

use crate::names::InstallationId;
use crate::nft;
use crate::policy::EgressPolicy;

/// Largest query accepted from a VM (EDNS's recommended UDP size).
const MAX_QUERY_BYTES: usize = 1232;
/// Largest upstream answer read.
const MAX_ANSWER_BYTES: usize = 4096;
/// How long each upstream gets before the next is tried.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// Queries one VM may have in flight; further ones are dropped (the client retries).
const MAX_IN_FLIGHT: usize = 32;
/// Most addresses taken from one answer into the VM's set.
const MAX_LEARNED_PER_ANSWER: usize = 16;
/// Bounds on how long a learned address stays in the set, whatever the TTL says.
const MIN_TIMEOUT_SECS: u32 = 30;
const MAX_TIMEOUT_SECS: u32 = 3600;

/// A running resolver; dropping it stops it.
pub struct Resolver {
    policy: watch::Sender<Arc<EgressPolicy>>,
    task: JoinHandle<()>,
}

impl Resolver {
    /// Binds `listen` and serves the VM whose address is `guest_ip` in slot `index` of installation `id`.
    pub async fn start(
        id: InstallationId,
        index: u32,
        listen: SocketAddr,
        guest_ip: Ipv4Addr,
        upstreams: Arc<Vec<SocketAddr>>,
        policy: EgressPolicy,
    ) -> std::io::Result<Resolver> {
        let socket = Arc::new(UdpSocket::bind(listen).await?);
        let (policy_tx, policy_rx) = watch::channel(Arc::new(policy));
        let context = Arc::new(Context { id, index, guest_ip, upstreams, policy: policy_rx, socket });
        let task = tokio::spawn(serve(context));
        Ok(Resolver { policy: policy_tx, task })
    }

    /// Makes later queries follow `policy`.
    pub fn update(&self, policy: EgressPolicy) {
        self.policy.send_replace(Arc::new(policy));
    }
}

impl Drop for Resolver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Context {
    id: InstallationId,
    index: u32,
    guest_ip: Ipv4Addr,
    upstreams: Arc<Vec<SocketAddr>>,
    policy: watch::Receiver<Arc<EgressPolicy>>,
    socket: Arc<UdpSocket>,
}

async fn serve(context: Arc<Context>) {
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut buf = vec![0u8; MAX_QUERY_BYTES + 1];
    loop {
        let (len, from) = match context.socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(err) => {
                tracing::warn!(index = context.index, %err, "vm resolver receive failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Only the VM itself, and only sane sizes.
        if from.ip() != context.guest_ip || len > MAX_QUERY_BYTES {
            continue;
        }
        let Ok(permit) = in_flight.clone().try_acquire_owned() else { continue };
        let query = buf[..len].to_vec();
        let context = context.clone();
        tokio::spawn(async move {
            if let Some(reply) = answer(&context, &query).await {
                let _ = context.socket.send_to(&reply, from).await;
            }
            drop(permit);
        });
    }
}

/// The reply to one raw query, or `None` to stay silent (unparseable input).
async fn answer(context: &Context, raw: &[u8]) -> Option<Vec<u8>> {
    let query = Message::from_vec(raw).ok()?;
    if query.message_type() != MessageType::Query {
        return None;
    }
    if query.op_code() != OpCode::Query || query.queries().len() != 1 {
        return reply_code(&query, ResponseCode::NotImp);
    }
    let policy = context.policy.borrow().clone();
    if !policy.outbound_internet {
        return reply_code(&query, ResponseCode::Refused);
    }
    let name = query.queries()[0].name().to_lowercase();
    if !policy.allows_name(&name.to_ascii()) {
        return reply_code(&query, ResponseCode::NXDomain);
    }
    let Some(mut upstream_answer) = forward(&context.upstreams, &query).await else {
        return reply_code(&query, ResponseCode::ServFail);
    };
    if policy.filters_domains() {
        let learned = addresses_for(&name, &upstream_answer);
        if !learned.is_empty() {
            // Before replying, so the VM's first connection already passes.
            if let Err(err) = nft::apply(nft::dns_elements_batch(&context.id, context.index, &learned)).await {
                tracing::warn!(index = context.index, %err, "could not add resolved addresses to the VM's set");
            }
        }
    }
    upstream_answer.set_id(query.id());
    upstream_answer.to_vec().ok()
}

fn reply_code(query: &Message, code: ResponseCode) -> Option<Vec<u8>> {
    let mut reply = Message::error_msg(query.id(), query.op_code(), code);
    reply.add_queries(query.queries().to_vec());
    reply.set_recursion_desired(query.recursion_desired()).set_recursion_available(true);
    reply.to_vec().ok()
}

/// Asks each upstream in turn with a fresh id; returns the first matching answer.
async fn forward(upstreams: &[SocketAddr], query: &Message) -> Option<Message> {
    let mut outgoing = query.clone();
    for upstream in upstreams {
        let id: u16 = rand::random();
        outgoing.set_id(id);
        let Ok(bytes) = outgoing.to_vec() else { return None };
        let bind: SocketAddr = if upstream.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
        let Ok(socket) = UdpSocket::bind(bind).await else { continue };
        if socket.connect(upstream).await.is_err() || socket.send(&bytes).await.is_err() {
            continue;
        }
        let wait = async {
            let mut buf = vec![0u8; MAX_ANSWER_BYTES];
            loop {
                let len = socket.recv(&mut buf).await.ok()?;
                let Ok(message) = Message::from_vec(&buf[..len]) else { continue };
                if message.id() == id
                    && message.message_type() == MessageType::Response
                    && message.queries() == query.queries()
                {
                    return Some(message);
                }
            }
        };
        if let Ok(Some(message)) = tokio::time::timeout(UPSTREAM_TIMEOUT, wait).await {
            return Some(message);
        }
    }
    None
}

/// A records for `name` (following CNAMEs in the answer), with set timeouts from their TTLs.
fn addresses_for(name: &Name, answer: &Message) -> Vec<(Ipv4Addr, u32)> {
    let mut chain: HashSet<Name> = HashSet::from([name.clone()]);
    let mut learned = Vec::new();
    for record in answer.answers() {
        let owner = record.name().to_lowercase();
        if !chain.contains(&owner) {
            continue;
        }
        match record.data() {
            RData::CNAME(target) => {
                chain.insert(target.0.to_lowercase());
            }
            RData::A(addr) if learned.len() < MAX_LEARNED_PER_ANSWER => {
                learned.push((addr.0, record.ttl().clamp(MIN_TIMEOUT_SECS, MAX_TIMEOUT_SECS)));
            }
            _ => {}
        }
    }
    learned
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::rdata::{A, CNAME};
    use hickory_proto::rr::{Record, RecordType};

    #[test]
    fn learned_addresses_follow_cnames_and_clamp_ttls() {
        let name = Name::from_ascii("www.allowed.test.").unwrap();
        let target = Name::from_ascii("cdn.allowed.test.").unwrap();
        let stranger = Name::from_ascii("evil.test.").unwrap();
        let mut answer = Message::new();
        answer.add_query(Query::query(name.clone(), RecordType::A));
        answer.add_answer(Record::from_rdata(name.clone(), 300, RData::CNAME(CNAME(target.clone()))));
        answer.add_answer(Record::from_rdata(target, 5, RData::A(A([1, 2, 3, 4].into()))));
        answer.add_answer(Record::from_rdata(stranger, 300, RData::A(A([6, 6, 6, 6].into()))));
        let learned = addresses_for(&name, &answer);
        assert_eq!(learned, vec![([1, 2, 3, 4].into(), MIN_TIMEOUT_SECS)]);
    }
}
