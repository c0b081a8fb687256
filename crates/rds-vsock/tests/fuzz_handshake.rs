//! Property tests of the hybrid-vsock handshake through the public API: the listener's
//! `CONNECT <port>\n` parser ([`read_connect`] on in-memory bytes and [`Pending::ready`] on a real
//! Unix socket) and the client's `OK <n>\n` parser ([`connect`] against a peer answering fuzzed
//! bytes).
//!
//! 256 cases per property by default; `PROPTEST_CASES=100000` for a longer run. No regression
//! files are written: a failure found here is kept as a plain `#[test]` instead.

use std::io;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestRunner};
use rds_vsock::{connect, read_connect, ConnectError, Listener};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

/// Longest handshake line (without its `\n`) either side accepts.
const MAX_LINE: usize = 64;

fn config() -> ProptestConfig {
    ProptestConfig { failure_persistence: None, ..ProptestConfig::default() }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// The port a line `<keyword> <port>` names, judged independently of the parsers: after the
/// keyword and one space, an optional `+` and decimal digits of a u32 (what `u32::from_str`
/// accepts). The listener (`trim`) also tolerates whitespace around the number, such as the `\r`
/// of a CRLF client; the client side takes the reply exactly.
fn model_port(line: &[u8], keyword: &str, trim: bool) -> Option<u32> {
    if line.len() > MAX_LINE {
        return None;
    }
    let rest = std::str::from_utf8(line).ok()?.strip_prefix(keyword)?.strip_prefix(' ')?;
    let rest = if trim { rest.trim() } else { rest };
    let digits = rest.strip_prefix('+').unwrap_or(rest);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let value = digits.bytes().try_fold(0u64, |acc, d| {
        let next = acc * 10 + u64::from(d - b'0');
        (next <= u64::from(u32::MAX)).then_some(next)
    })?;
    u32::try_from(value).ok()
}

/// What the listener makes of `bytes`: the port of its first line, if well-formed.
fn connect_port(bytes: &[u8]) -> Option<u32> {
    split_line(bytes).and_then(|(line, _)| model_port(line, "CONNECT", true))
}

/// The first line of `bytes` (without `\n`) and what follows it, if there is a `\n`.
fn split_line(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let nl = bytes.iter().position(|b| *b == b'\n')?;
    Some((&bytes[..nl], &bytes[nl + 1..]))
}

/// Handshake lines: well-formed ones, near misses (case, spacing, signs, overflow, other bases,
/// padding to the length limit) and anything at all.
fn handshake_bytes(keyword: &'static str) -> impl Strategy<Value = Vec<u8>> {
    let port = prop_oneof![any::<u32>().prop_map(|p| p.to_string()), any::<u64>().prop_map(|p| p.to_string())];
    let decorated = (
        prop::sample::select(vec![keyword.to_string(), keyword.to_lowercase(), format!("{keyword} "), String::new()]),
        prop::sample::select(vec!["", " ", "+", "-", "0x", "00", "\t", "\u{a0}"]),
        port,
        prop::sample::select(vec!["", " ", "\r", "x", "\0", " 1"]),
        0usize..80,
        prop::sample::select(vec!["\n", "", "\r\n", "\nrest of the stream"]),
    )
        .prop_map(|(kw, pre, port, post, pad, end)| {
            format!("{kw} {pre}{port}{post}{}{end}", " ".repeat(pad)).into_bytes()
        });
    prop_oneof![
        3 => decorated,
        1 => prop::collection::vec(any::<u8>(), 0..200),
        1 => (prop::collection::vec(any::<u8>(), 0..100), any::<u32>())
            .prop_map(move |(tail, p)| [format!("{keyword} {p}\n").into_bytes(), tail].concat()),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn read_connect_accepts_exactly_well_formed_lines(bytes in handshake_bytes("CONNECT")) {
        let mut stream = bytes.as_slice();
        let got = runtime().block_on(read_connect(&mut stream));
        let want = connect_port(&bytes);
        match (&got, want) {
            (Ok(port), Some(want)) => {
                prop_assert_eq!(*port, want);
                // Nothing past the handshake line is consumed: it belongs to the application.
                prop_assert_eq!(stream, split_line(&bytes).unwrap().1);
            }
            (Err(e), None) => {
                let line_len = bytes.iter().position(|b| *b == b'\n').unwrap_or(bytes.len());
                let kind = if line_len > MAX_LINE { io::ErrorKind::InvalidData } else if !bytes.contains(&b'\n') { io::ErrorKind::UnexpectedEof } else { io::ErrorKind::InvalidData };
                prop_assert_eq!(e.kind(), kind, "{:?}: {}", String::from_utf8_lossy(&bytes), e);
            }
            _ => return Err(TestCaseError::fail(format!("{:?}: got {got:?}, want {want:?}", String::from_utf8_lossy(&bytes)))),
        }
    }

    #[test]
    fn formatted_connect_lines_round_trip(port in any::<u32>(), tail in prop::collection::vec(any::<u8>(), 0..64)) {
        let bytes = [format!("CONNECT {port}\n").into_bytes(), tail.clone()].concat();
        let mut stream = bytes.as_slice();
        prop_assert_eq!(runtime().block_on(read_connect(&mut stream)).unwrap(), port);
        prop_assert_eq!(stream, tail.as_slice());
    }

    #[test]
    fn lines_over_the_limit_are_refused(len in (MAX_LINE + 1)..400, port in any::<u32>()) {
        let line = format!("CONNECT {port}");
        let bytes = format!("{line}{}\n", " ".repeat(len.saturating_sub(line.len()))).into_bytes();
        prop_assume!(bytes.len() - 1 > MAX_LINE);
        let err = runtime().block_on(read_connect(&mut bytes.as_slice())).unwrap_err();
        prop_assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}

/// The listener's own parser, behind `Listener::uds` + `Pending::ready`, with one socket for all
/// cases: a client writes the fuzzed bytes and closes its write side.
#[test]
fn pending_ready_accepts_exactly_its_own_port() {
    const PORT: u32 = 1024;
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let listener = rt.block_on(async { Listener::uds(&sock, PORT) }).unwrap();
    let strategy = prop_oneof![
        2 => handshake_bytes("CONNECT"),
        1 => prop::sample::select(vec![PORT - 1, PORT, PORT + 1, 0, u32::MAX])
            .prop_map(|p| format!("CONNECT {p}\n").into_bytes()),
    ];
    let mut runner = TestRunner::new(config());
    let outcome = runner.run(&strategy, |bytes| {
        rt.block_on(async {
            let mut client = UnixStream::connect(&sock).await.unwrap();
            client.write_all(&bytes).await.unwrap();
            client.shutdown().await.unwrap();
            let ready = listener.accept().await.unwrap().ready().await;
            let want = connect_port(&bytes);
            match ready {
                Ok(stream) => {
                    drop(stream);
                    prop_assert_eq!(want, Some(PORT), "{:?} was accepted", String::from_utf8_lossy(&bytes));
                    let mut reply = Vec::new();
                    client.read_to_end(&mut reply).await.unwrap();
                    prop_assert_eq!(reply, format!("OK {PORT}\n").into_bytes());
                }
                Err(e) => prop_assert_ne!(want, Some(PORT), "{:?} was refused: {}", String::from_utf8_lossy(&bytes), e),
            }
            Ok(())
        })
    });
    outcome.unwrap();
}

/// The client's `OK <n>` parser: a peer reads the `CONNECT` line, answers the fuzzed bytes and
/// hangs up; `connect` must succeed exactly when the first reply line is `OK <u32>`.
#[test]
fn connect_accepts_exactly_ok_lines() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("vm.sock");
    let peer = rt.block_on(async { UnixListener::bind(&sock) }).unwrap();
    let strategy = (handshake_bytes("OK"), any::<u32>());
    let mut runner = TestRunner::new(config());
    let outcome = runner.run(&strategy, |(reply, port)| {
        rt.block_on(async {
            let answer = async {
                let (mut s, _) = peer.accept().await.unwrap();
                let asked = read_connect(&mut s).await.unwrap();
                // The client may hang up mid-reply (a line over the limit); that is its answer.
                let _ = s.write_all(&reply).await;
                asked
            };
            let (connected, asked) = tokio::join!(connect(&sock, port, Duration::from_secs(5)), answer);
            prop_assert_eq!(asked, port);
            let want = split_line(&reply).and_then(|(line, _)| model_port(line, "OK", false));
            match connected {
                Ok(_) => prop_assert!(want.is_some(), "{:?} was accepted", String::from_utf8_lossy(&reply)),
                Err(ConnectError::BadHandshake(e)) => {
                    prop_assert!(want.is_none(), "{:?} was refused: {}", String::from_utf8_lossy(&reply), e)
                }
                Err(e) => return Err(TestCaseError::fail(format!("unexpected error {e}"))),
            }
            Ok(())
        })
    });
    outcome.unwrap();
}
