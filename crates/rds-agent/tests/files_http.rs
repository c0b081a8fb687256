//! File routes through the real agent binary (the attack corpus lives in `files_attacks.rs`).

mod common;

use std::io::Read;

use common::Agent;
use http::{Method, StatusCode};
use rds_testkit::tar_gz;

#[tokio::test]
async fn upload_then_download_round_trips_over_http() {
    let Some(agent) = Agent::start().await else { return };
    let archive = tar_gz(&[("hello.txt", b"hello world\n"), ("dir/nested.txt", "é\n".as_bytes())]);
    let reply =
        agent.request(Method::POST, "/files/upload?dest=proj", &[("content-type", "application/gzip")], archive).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", String::from_utf8_lossy(&reply.body));
    assert!(reply.json()["entries"].as_u64().unwrap() >= 2);

    // Written as the sandbox user, visible to its commands.
    let result = agent
        .exec(serde_json::json!({"cmd": "cat proj/hello.txt proj/dir/nested.txt; stat -c %u proj/hello.txt"}))
        .await;
    assert_eq!(result["stdout"], "hello world\né\n1000\n");

    let reply = agent.request(Method::GET, "/files/download?path=proj", &[], Vec::new()).await;
    assert_eq!(reply.status, StatusCode::OK);
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&reply.body[..]));
    let mut found = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        if entry.header().entry_type().is_file() {
            let mut data = String::new();
            entry.read_to_string(&mut data).unwrap();
            found.push((path.trim_start_matches("./").to_string(), data));
        }
    }
    found.sort();
    assert_eq!(
        found,
        vec![("dir/nested.txt".to_string(), "é\n".to_string()), ("hello.txt".to_string(), "hello world\n".to_string())]
    );
}

#[tokio::test]
async fn download_errors_are_statuses_not_broken_streams() {
    let Some(agent) = Agent::start().await else { return };
    let reply = agent.request(Method::GET, "/files/download?path=missing", &[], Vec::new()).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{}", String::from_utf8_lossy(&reply.body));
    let reply = agent.request(Method::GET, "/files/download?path=/etc", &[], Vec::new()).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let reply = agent.request(Method::GET, "/files/download", &[], Vec::new()).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.json()["error"]["message"].as_str().unwrap().contains("path"));
}
