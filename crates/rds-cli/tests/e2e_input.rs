//! End-to-end: hostile or careless input — JSON with trailing data, a gzip bomb, rejected bodies
//! sent by clients that never wait for `100 Continue` — and the host-facing defaults: private
//! database files, `rds serve` under `ip netns exec`.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use common::Server;
use serde_json::json;

/// Sends a whole request (head and body) before reading anything, as Python's `http.client` and
/// Node's `fetch` do, then reads the answer to its end; returns its status and text. A server that
/// answers early and drops the connection with the body unread makes this fail (EPIPE or
/// ECONNRESET) instead of returning a status.
fn send_whole_then_read(s: &Server, method: &str, path: &str, key: &str, body: &[u8]) -> (u16, String) {
    let mut conn = TcpStream::connect(("127.0.0.1", s.port)).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    conn.set_write_timeout(Some(Duration::from_secs(60))).unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {key}\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).expect("write the request head");
    if let Err(e) = conn.write_all(body) {
        panic!("{method} {path}: the server broke the connection while the body was being sent: {e}");
    }
    let mut answer = Vec::new();
    if let Err(e) = conn.read_to_end(&mut answer) {
        panic!("{method} {path}: reading the answer failed after {} bytes: {e}", answer.len());
    }
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status =
        text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("no status line in {text:?}"));
    (status, text)
}

/// A tar.gz of `count` entries, each unpacking to `size` bytes of zeros (about 1/1000 of that
/// compressed).
fn gzip_bomb(count: usize, size: u64) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let zeros = vec![0u8; 1 << 20];
    for i in 0..count {
        let mut header = tar::Header::new_gnu();
        header.set_path(format!("bomb{i}.bin")).unwrap();
        header.set_size(size);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        gz.write_all(header.as_bytes()).unwrap();
        // Content and its padding to 512 bytes are zeros.
        let mut left = size.div_ceil(512) * 512;
        while left > 0 {
            let n = left.min(zeros.len() as u64) as usize;
            gz.write_all(&zeros[..n]).unwrap();
            left -= n as u64;
        }
    }
    gz.write_all(&[0u8; 1024]).unwrap(); // end of archive
    gz.finish().unwrap()
}

/// The classic bomb: no archive at all, `size` zeros gzipped (a tar reader sees an end-of-archive
/// marker at once, then data that never ends).
fn gzip_zeros(size: u64) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..size / zeros.len() as u64 {
        gz.write_all(&zeros).unwrap();
    }
    gz.finish().unwrap()
}

#[test]
fn json_body_with_trailing_data_is_rejected_and_creates_nothing() {
    common::must_run_here();
    let s = Server::start(&[]);
    for body in [r#"{"cpu":1,"memMb":64} xyz"#, r#"{"cpu":1,"memMb":64}{"cpu":1,"memMb":64}"#] {
        let res = s.req("POST", "/v1/vms").set("Content-Type", "application/json").send_string(body);
        let (st, err) = common::into_status_json(res);
        assert_eq!(st, 400, "{body}: {err}");
        let msg = err["error"]["message"].as_str().unwrap();
        assert!(msg.contains("unexpected data after the JSON value"), "{msg}");
    }
    let (_, list) = s.call("GET", "/v1/vms", None);
    assert_eq!(list, json!([]), "no VM was created");
}

#[test]
fn gzip_bomb_upload_is_rejected_with_the_limit_named() {
    common::must_run_here();
    let s = Server::start(&[]);
    let id = s.create_vm(256);
    // One entry declaring more than the limit, and entries that each fit but together do not.
    let bombs = [gzip_bomb(1, 300 << 20), gzip_bomb(15, 20 << 20), gzip_zeros(1 << 30)];
    let path = format!("/v1/vms/{id}/files/upload?dest=/workspace");
    for round in 0..2 * bombs.len() {
        let bomb = &bombs[round / 2];
        eprintln!("bomb {}: {} compressed bytes", round / 2, bomb.len());
        // Both a normal client and one that sends everything before reading get the answer.
        let (st, text) = if round % 2 == 0 {
            let res = s.req("POST", &path).set("Content-Type", "application/gzip").send_bytes(bomb);
            let (st, v) = common::into_status_json(res);
            (st, v.to_string())
        } else {
            send_whole_then_read(&s, "POST", &path, &s.key, bomb)
        };
        assert!(st == 400 || st == 413, "round {round}: {st} {text}");
        assert!(text.contains("262144000"), "the limit is named: {text}");
    }
    let r = s.exec(&id, "ls -A /workspace; echo done");
    assert_eq!(r["stdout"], "done\n", "nothing of the bomb was kept");
}

#[test]
fn early_rejections_are_readable_by_clients_that_send_the_whole_body_first() {
    common::must_run_here();
    let s = Server::start(&[("MAX_UPLOAD_BYTES", "1048576")]);
    let id = s.create_vm(256);
    // Larger than loopback socket buffers absorb, so an unread body cannot hide in them.
    let big = vec![b' '; 8 << 20];
    let upload = format!("/v1/vms/{id}/files/upload?dest=/workspace");
    let cases: [(&str, &str, &[u8], u16, &str); 4] = [
        ("/v1/vms", s.key.as_str(), &big, 413, "MAX_JSON_BODY_BYTES"),
        ("/v1/vms", "wrong-key-0123456789", &big, 401, "unauthorized"),
        (&upload, s.key.as_str(), &big, 413, "MAX_UPLOAD_BYTES"),
        (&upload, s.key.as_str(), &big[..900 << 10], 400, "tar.gz"),
    ];
    for (path, key, body, want, says) in cases {
        let (st, text) = send_whole_then_read(&s, "POST", path, key, body);
        assert_eq!(st, want, "{path} with {} bytes: {text}", body.len());
        assert!(text.contains(says), "{path}: {text}");
    }
    // The VM is unharmed and the manager still answers on fresh connections.
    assert_eq!(s.exec(&id, "echo ok")["stdout"], "ok\n");
}

#[test]
fn database_files_and_storage_root_are_private_even_if_loosened() {
    common::must_run_here();
    let mut s = Server::start(&[]);
    s.create_vm(128);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let root = s.root.path().to_path_buf();
    let files = ["rds.db", "rds.db-wal", "rds.db-shm"].map(|f| root.join(f));
    assert_eq!(mode(&root), 0o700);
    for f in &files {
        assert_eq!(mode(f), 0o600, "{}", f.display());
    }
    s.kill9();
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
    for f in files.iter().filter(|f| f.exists()) {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    s.restart();
    assert_eq!(mode(&root), 0o700, "storage root fixed at start");
    for f in files.iter().filter(|f| f.exists()) {
        assert_eq!(mode(f), 0o600, "{} fixed at start", f.display());
    }
}

/// A network namespace made (and removed) by the test.
struct Netns(String);

impl Netns {
    fn new(name: &str) -> Netns {
        if std::path::Path::new(&format!("/run/netns/{name}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
        let ok = Command::new("ip").args(["netns", "add", name]).status().expect("run ip").success();
        assert!(ok, "ip netns add {name} failed (needs root and iproute2)");
        let ok = Command::new("ip").args(["-n", name, "link", "set", "lo", "up"]).status().unwrap().success();
        assert!(ok, "cannot bring lo up in {name}");
        Netns(name.to_string())
    }

    /// Moves the calling thread into the namespace.
    fn enter(&self) {
        let file = std::fs::File::open(format!("/run/netns/{}", self.0)).expect("open the netns");
        // SAFETY: setns on an fd we own; it changes only this thread's network namespace.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {}: {}", self.0, std::io::Error::last_os_error());
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn serve_under_ip_netns_exec_finds_the_cgroup_hierarchies() {
    common::must_run_here();
    let ns = Netns::new(&format!("rds-cg-{}", std::process::id()));
    let name = ns.0.clone();
    // `ip netns exec` mounts a fresh /sys, which hides the cgroup mounts from `rds serve`.
    let hidden = Command::new("ip").args(["netns", "exec", &name, "ls", "-A", "/sys/fs/cgroup"]).output().unwrap();
    eprintln!("/sys/fs/cgroup under ip netns exec: {:?}", String::from_utf8_lossy(&hidden.stdout));
    let worker = std::thread::spawn(move || {
        let ns = Netns(name);
        ns.enter();
        let s = Server::start_prefixed(&["ip", "netns", "exec", &ns.0], "127.0.0.1", &[]);
        let id = s.create_vm(128);
        assert_eq!(s.exec(&id, "echo inside")["stdout"], "inside\n");
        let (st, body) = s.call("DELETE", &format!("/v1/vms/{id}"), None);
        assert_eq!(st, 204, "{body}");
        drop(s);
        std::mem::forget(ns); // the outer guard removes the namespace
    });
    worker.join().expect("rds serve under ip netns exec");
    drop(ns);
}
