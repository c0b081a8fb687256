//! Test topology built only of network namespaces this test creates (and always deletes).
//!
//! Nothing here touches the root namespace's interfaces or rules: links are created with
//! `ip -n <ns>`, and every thread that binds sockets or runs `Network` first `setns`-es into its
//! namespace and verifies it got there.

#![allow(dead_code)]

use std::future::Future;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::fs::MetadataExt;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use nix::sched::{setns, CloneFlags};
use rds_net::{AddressPool, InstallationId, Network, NetworkConfig};

/// How long a probe waits before calling a destination unreachable.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(700);

/// Why this machine cannot run the namespace tests, if it cannot.
pub fn skip_reason() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root to create network namespaces".into());
    }
    for tool in ["ip", "nft"] {
        let ok = Command::new(tool).arg("-V").stdout(Stdio::null()).stderr(Stdio::null()).status();
        let ok = ok.is_ok() || Command::new(tool).arg("--version").output().is_ok();
        if !ok {
            return Some(format!("`{tool}` is not installed"));
        }
    }
    None
}

/// Runs a command, panicking with its stderr on failure.
pub fn sh(program: &str, args: &[&str]) -> String {
    let output = Command::new(program).args(args).output().expect("spawn");
    assert!(
        output.status.success(),
        "{program} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Named namespaces plus helper processes; deleted/killed on drop, even after a failed assert.
pub struct Topology {
    pub prefix: String,
    namespaces: Vec<String>,
    sleepers: Vec<Child>,
    pub stop: Arc<AtomicBool>,
}

impl Topology {
    pub fn new() -> Topology {
        let prefix = format!("rdsnet{}x{}", std::process::id(), rand_suffix());
        Topology { prefix, namespaces: Vec::new(), sleepers: Vec::new(), stop: Arc::new(AtomicBool::new(false)) }
    }

    /// Creates namespace `<prefix>-<role>` with loopback up; returns its name.
    pub fn add_ns(&mut self, role: &str) -> String {
        let name = format!("{}-{role}", self.prefix);
        sh("ip", &["netns", "add", &name]);
        self.namespaces.push(name.clone());
        sh("ip", &["-n", &name, "link", "set", "lo", "up"]);
        name
    }

    /// Starts a long sleeper inside `ns` (a stand-in sandbox process) and returns its pid.
    pub fn sleeper(&mut self, ns: &str) -> i32 {
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "sleep", "600"])
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn sleeper");
        let pid = child.id() as i32;
        self.sleepers.push(child);
        // `ip netns exec` execs `sleep` in place; wait until the pid is in the namespace.
        let target = std::fs::metadata(format!("/run/netns/{ns}")).unwrap().ino();
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::metadata(format!("/proc/{pid}/ns/net")).map(|m| m.ino()).ok() != Some(target) {
            assert!(Instant::now() < deadline, "sleeper never entered {ns}");
            std::thread::sleep(Duration::from_millis(10));
        }
        pid
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for child in &mut self.sleepers {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn rand_suffix() -> u32 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    nanos % 100_000
}

/// Moves the current thread into `ns` and proves it is there.
fn enter(ns: &str) {
    let path = format!("/run/netns/{ns}");
    let file = std::fs::File::open(&path).expect("open netns");
    setns(&file, CloneFlags::CLONE_NEWNET).expect("setns");
    let here = std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino();
    assert_eq!(here, std::fs::metadata(&path).unwrap().ino(), "thread is not in {ns}");
}

/// Runs `f` on a fresh thread inside `ns`.
pub fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        enter(&ns);
        f()
    })
    .join()
    .expect("namespace thread panicked")
}

/// Spawns a detached thread inside `ns` (for servers); it must watch `stop`.
pub fn spawn_in_ns(ns: &str, f: impl FnOnce() + Send + 'static) {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        enter(&ns);
        f()
    });
}

/// TCP server: every accepted connection gets `reply` and is closed.
pub fn tcp_server(ns: &str, addr: SocketAddr, reply: &'static str, stop: Arc<AtomicBool>) {
    let (ready_tx, ready_rx) = mpsc::channel();
    spawn_in_ns(ns, move || {
        let listener = TcpListener::bind(addr).expect("bind tcp server");
        listener.set_nonblocking(true).unwrap();
        ready_tx.send(()).unwrap();
        while !stop.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok((mut stream, _)) => {
                    let _ = stream.write_all(reply.as_bytes());
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    });
    ready_rx.recv_timeout(Duration::from_secs(5)).expect("tcp server ready");
}

/// UDP echo server recording every payload it receives.
pub fn udp_echo(ns: &str, addr: SocketAddr, stop: Arc<AtomicBool>) -> Arc<Mutex<Vec<String>>> {
    let log = Arc::new(Mutex::new(Vec::new()));
    let (ready_tx, ready_rx) = mpsc::channel();
    let seen = log.clone();
    spawn_in_ns(ns, move || {
        let socket = UdpSocket::bind(addr).expect("bind udp echo");
        socket.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        ready_tx.send(()).unwrap();
        let mut buf = [0u8; 1500];
        while !stop.load(Ordering::SeqCst) {
            if let Ok((len, from)) = socket.recv_from(&mut buf) {
                seen.lock().unwrap().push(String::from_utf8_lossy(&buf[..len]).into_owned());
                let _ = socket.send_to(&buf[..len], from);
            }
        }
    });
    ready_rx.recv_timeout(Duration::from_secs(5)).expect("udp echo ready");
    log
}

/// Fake upstream DNS: fixed A records, NXDOMAIN for everything else.
pub fn dns_server(ns: &str, addr: SocketAddr, records: Vec<(&'static str, Ipv4Addr)>, stop: Arc<AtomicBool>) {
    let (ready_tx, ready_rx) = mpsc::channel();
    spawn_in_ns(ns, move || {
        let socket = UdpSocket::bind(addr).expect("bind dns server");
        socket.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        ready_tx.send(()).unwrap();
        let mut buf = [0u8; 1500];
        while !stop.load(Ordering::SeqCst) {
            let Ok((len, from)) = socket.recv_from(&mut buf) else { continue };
            let Ok(query) = Message::from_vec(&buf[..len]) else { continue };
            let Some(question) = query.queries().first().cloned() else { continue };
            let asked = question.name().to_ascii().trim_end_matches('.').to_lowercase();
            let mut reply = Message::error_msg(query.id(), query.op_code(), ResponseCode::NoError);
            reply.add_query(question.clone());
            match records.iter().find(|(name, _)| *name == asked) {
                Some((_, ip)) if question.query_type() == RecordType::A => {
                    reply.add_answer(Record::from_rdata(question.name().clone(), 60, RData::A(A(*ip))));
                }
                Some(_) => {}
                None => {
                    reply.set_response_code(ResponseCode::NXDomain);
                }
            }
            let _ = socket.send_to(&reply.to_vec().unwrap(), from);
        }
    });
    ready_rx.recv_timeout(Duration::from_secs(5)).expect("dns server ready");
}

/// Whether a TCP connection to `addr` succeeds and the server's greeting arrives.
pub fn tcp_reaches(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT) else { return false };
    stream.set_read_timeout(Some(PROBE_TIMEOUT)).unwrap();
    let mut buf = [0u8; 16];
    matches!(stream.read(&mut buf), Ok(n) if n > 0)
}

/// Whether a UDP datagram to `addr` is echoed back.
pub fn udp_reaches(addr: SocketAddr, payload: &str) -> bool {
    let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
    socket.set_read_timeout(Some(PROBE_TIMEOUT)).unwrap();
    if socket.send_to(payload.as_bytes(), addr).is_err() {
        return false;
    }
    let mut buf = [0u8; 1500];
    matches!(socket.recv_from(&mut buf), Ok((n, _)) if &buf[..n] == payload.as_bytes())
}

/// Sends one datagram from a chosen source address (which must exist in this namespace).
pub fn udp_send_from(source: Ipv4Addr, addr: SocketAddr, payload: &str) {
    let socket = UdpSocket::bind((source, 0)).expect("bind forged source");
    let _ = socket.send_to(payload.as_bytes(), addr);
}

/// A DNS A query: `Some((rcode, addresses))`, or `None` when nothing answered in time.
pub fn dns_query(server: SocketAddr, name: &str) -> Option<(ResponseCode, Vec<Ipv4Addr>)> {
    let mut query = Message::new();
    query.set_id(0x4242).set_message_type(MessageType::Query).set_recursion_desired(true);
    query.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    socket.send_to(&query.to_vec().unwrap(), server).ok()?;
    let mut buf = [0u8; 4096];
    let (len, _) = socket.recv_from(&mut buf).ok()?;
    let reply = Message::from_vec(&buf[..len]).ok()?;
    assert_eq!(reply.id(), 0x4242, "reply id must match the query");
    let addrs = reply
        .answers()
        .iter()
        .filter_map(|r| match r.data() {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect();
    Some((reply.response_code(), addrs))
}

type Job = Box<dyn FnOnce(Arc<Network>) -> Pin<Box<dyn Future<Output = ()>>> + Send>;

/// The "host": a thread inside the host namespace driving a current-thread runtime that owns
/// the `Network`, so every socket, `ip` and `nft` it creates lives in that namespace.
pub struct HostSide {
    jobs: Option<tokio::sync::mpsc::UnboundedSender<Job>>,
    /// The installation the `Network` belongs to (its table and interface names).
    pub id: InstallationId,
}

impl HostSide {
    pub fn start(ns: &str, pool: AddressPool, dns_upstreams: Vec<SocketAddr>) -> HostSide {
        let id = InstallationId::generate();
        let config = NetworkConfig { dns_upstreams, ..NetworkConfig::new(id.clone(), pool) };
        let (jobs_tx, mut jobs_rx) = tokio::sync::mpsc::unbounded_channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        spawn_in_ns(ns, move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let network = match Network::new(config).await {
                    Ok(network) => Arc::new(network),
                    Err(err) => {
                        let _ = ready_tx.send(Err(err.to_string()));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                while let Some(job) = jobs_rx.recv().await {
                    job(network.clone()).await;
                }
            });
        });
        ready_rx.recv_timeout(Duration::from_secs(30)).expect("host side started").expect("Network::new");
        HostSide { jobs: Some(jobs_tx), id }
    }

    /// Runs `f` on the host thread and waits (bounded) for its result.
    pub fn run<T, F, Fut>(&self, f: F) -> T
    where
        T: Send + 'static,
        F: FnOnce(Arc<Network>) -> Fut + Send + 'static,
        Fut: Future<Output = T> + 'static,
    {
        let (tx, rx) = mpsc::channel();
        let job: Job = Box::new(move |network| {
            Box::pin(async move {
                let _ = tx.send(f(network).await);
            })
        });
        self.jobs.as_ref().unwrap().send(job).expect("host thread alive");
        rx.recv_timeout(Duration::from_secs(120)).expect("host job finished")
    }
}

impl Drop for HostSide {
    fn drop(&mut self) {
        // Closing the channel ends the host thread's loop (and drops the Network's resolvers).
        self.jobs.take();
    }
}
