//! Drop-in compatibility with the original run-dat-sheesh API, in-process: each test sends what a
//! client written against the original's contract sends, and checks the status and the body shape
//! that client reads (a top-level `message` on errors, `guestIp` and `provisionMode` on VMs, 204 on
//! upload, ...). Our own extensions are not checked here (contract.rs does); the deliberate
//! differences are listed in docs/compatibility.md.

use axum::body::{Body, Bytes};
use axum::Router;
use http::{header, Method, Request, StatusCode};
use http_body_util::BodyExt;
use rds_manager::{routes, AppState};
use rds_testkit::{tar_gz, untar_gz};
use serde_json::{json, Value};
use tower::ServiceExt;

const KEY: &str = "rds_compat_test_key_0123456789ab";

/// The router and the directory holding the database and the VMs.
struct Api {
    router: Router,
    state: AppState,
    _dir: tempfile::TempDir,
}

impl Drop for Api {
    fn drop(&mut self) {
        // Read-only trees the agents left would outlive `TempDir` when not root.
        if let Err(e) = rds_manager::testing::remove_tree(self._dir.path()) {
            eprintln!("could not remove {}: {e}", self._dir.path().display());
        }
    }
}

/// A response: status, headers and body.
struct Reply {
    status: StatusCode,
    content_type: Option<String>,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Reply {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Asserts the status and returns the JSON body.
    #[track_caller]
    fn expect(&self, status: StatusCode) -> Value {
        assert_eq!(self.status, status, "body: {}", self.text());
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }

    /// Asserts the status and the original's error shape: a non-empty top-level `message`
    /// containing `needle`.
    #[track_caller]
    fn expect_message(&self, status: StatusCode, needle: &str) {
        let body = self.expect(status);
        let message = body["message"].as_str().unwrap_or_else(|| panic!("no top-level `message`: {body}"));
        assert!(!message.is_empty(), "{body}");
        assert!(message.contains(needle), "message {message:?} should contain {needle:?}");
    }

    /// Asserts 204 with no body, as the original's clients do.
    #[track_caller]
    fn expect_no_content(&self) {
        assert_eq!(self.status, StatusCode::NO_CONTENT, "body: {}", self.text());
        assert!(self.body.is_empty(), "204 has no body, got {}", self.text());
    }
}

impl Api {
    fn new(vars: &[(&str, &str)]) -> Api {
        let dir = tempfile::tempdir().expect("creating the test directory");
        let state = rds_manager::testing::in_process_state(dir.path(), vars, KEY);
        Api { router: routes::router(state.clone()), state, _dir: dir }
    }

    async fn send(&self, req: Request<Body>) -> Reply {
        let resp = self.router.clone().oneshot(req).await.expect("the router is infallible");
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("reading the response body").to_bytes();
        let content_type = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_string);
        Reply { status: parts.status, content_type, headers: parts.headers, body }
    }

    /// A request with the API key (`X-API-Key`, as the original's clients send it) and a raw body.
    async fn raw(&self, method: Method, path: &str, content_type: &str, body: impl Into<Body>) -> Reply {
        let req = Request::builder().method(method).uri(path).header("X-API-Key", KEY);
        let req = if content_type.is_empty() { req } else { req.header(header::CONTENT_TYPE, content_type) };
        self.send(req.body(body.into()).unwrap()).await
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Reply {
        match body {
            Some(b) => self.raw(method, path, "application/json", b.to_string()).await,
            None => self.raw(method, path, "", Body::empty()).await,
        }
    }

    /// The original's integration fixture `vmDeny`-like VM, without egress: RUNNING, its id.
    async fn vm(&self) -> String {
        let body = json!({"cpu": 1, "memMb": 256, "allowIps": ["1.2.3.4/32"]});
        let vm = self.call(Method::POST, "/v1/vms", Some(body)).await.expect(StatusCode::CREATED);
        vm["id"].as_str().expect("the VM has an id").to_string()
    }
}

/// The fields of the original's `VmPublic` a client reads, with their types.
#[track_caller]
fn assert_vm_public(vm: &Value) {
    let obj = vm.as_object().unwrap_or_else(|| panic!("a VM is an object: {vm}"));
    assert!(obj["id"].is_string(), "{vm}");
    let state = obj["state"].as_str().unwrap_or_else(|| panic!("state: {vm}"));
    assert!(["CREATED", "STARTING", "RUNNING", "STOPPING", "STOPPED", "ERROR"].contains(&state), "{vm}");
    assert!(obj["cpu"].is_u64() && obj["memMb"].is_u64(), "{vm}");
    assert!(obj["outboundInternet"].is_boolean(), "{vm}");
    assert!(obj.contains_key("createdAt"), "{vm}");
    // Top level, as the original has it; the same address as our `network.guestIp`.
    assert!(obj.contains_key("guestIp"), "top-level guestIp: {vm}");
    assert!(obj["guestIp"].is_string() || obj["guestIp"].is_null(), "{vm}");
    assert_eq!(obj["guestIp"], vm["network"]["guestIp"], "{vm}");
    assert_eq!(obj["provisionMode"], "boot", "{vm}");
    let links = obj["peerLinks"].as_array().unwrap_or_else(|| panic!("peerLinks: {vm}"));
    for link in links {
        assert!(link["alias"].is_string() && link["vmId"].is_string() && link["sourceMode"].is_string(), "{vm}");
    }
    for secret in ["allowIps", "secretEnv", "tapName", "vsockCid"] {
        assert!(!obj.contains_key(secret), "{secret} is never returned: {vm}");
    }
}

// ---------------------------------------------------------------------------------------------
// §1.1 global behaviour, §12.1 routes.test.ts

#[tokio::test]
async fn missing_or_wrong_api_key_answers_401_with_a_message() {
    let api = Api::new(&[]);
    for path in ["/v1/vms", "/v1/images"] {
        let none = api.send(Request::get(path).body(Body::empty()).unwrap()).await;
        none.expect_message(StatusCode::UNAUTHORIZED, "");
        let wrong = api.send(Request::get(path).header("X-API-Key", "rds_wrong").body(Body::empty()).unwrap()).await;
        wrong.expect_message(StatusCode::UNAUTHORIZED, "");
    }
}

#[tokio::test]
async fn unknown_vm_answers_404_with_a_message_on_every_vm_route() {
    let api = Api::new(&[]);
    let missing = "00000000-0000-4000-8000-000000000000";
    api.call(Method::GET, &format!("/v1/vms/{missing}"), None).await.expect_message(StatusCode::NOT_FOUND, missing);
    for (m, path, body) in [
        (Method::POST, "start", None),
        (Method::POST, "stop", None),
        (Method::DELETE, "", None),
        (Method::POST, "exec", Some(json!({"cmd": "id"}))),
        (Method::POST, "run-ts", Some(json!({"code": "1"}))),
        (Method::POST, "run-js", Some(json!({"code": "1"}))),
        (Method::GET, "logs", None),
        (Method::GET, "exec-logs", None),
        (Method::GET, "files/download?path=/workspace", None),
    ] {
        let uri = if path.is_empty() { format!("/v1/vms/{missing}") } else { format!("/v1/vms/{missing}/{path}") };
        api.call(m, &uri, body).await.expect_message(StatusCode::NOT_FOUND, missing);
    }
}

// ---------------------------------------------------------------------------------------------
// §1.6 VMs

#[tokio::test]
async fn create_answers_201_running_with_top_level_guest_ip_and_provision_mode_on_create_get_and_list() {
    let api = Api::new(&[]);
    let vm = api
        .call(Method::POST, "/v1/vms", Some(json!({"cpu": 1, "memMb": 256, "allowIps": ["1.2.3.4/32"]})))
        .await
        .expect(StatusCode::CREATED);
    assert_vm_public(&vm);
    assert_eq!(vm["state"], "RUNNING");
    assert_eq!((vm["cpu"].as_u64(), vm["memMb"].as_u64()), (Some(1), Some(256)));
    assert_eq!(vm["outboundInternet"], false);
    assert_eq!(vm["peerLinks"], json!([]));
    let id = vm["id"].as_str().unwrap();

    let got = api.call(Method::GET, &format!("/v1/vms/{id}"), None).await.expect(StatusCode::OK);
    assert_vm_public(&got);
    assert_eq!((&got["id"], &got["guestIp"]), (&vm["id"], &vm["guestIp"]));
    let list = api.call(Method::GET, "/v1/vms", None).await.expect(StatusCode::OK);
    let list = list.as_array().expect("a list");
    assert_eq!(list.len(), 1);
    assert_vm_public(&list[0]);
    assert_eq!(list[0]["id"], id);
}

#[tokio::test]
async fn create_accepts_string_numbers_booleans_and_a_lone_allow_ip_as_the_originals_validator_does() {
    let api = Api::new(&[]);
    let body =
        json!({"cpu": "1", "memMb": "256", "diskSizeMb": "64", "outboundInternet": "false", "allowIps": "1.2.3.4/32"});
    let vm = api.call(Method::POST, "/v1/vms", Some(body)).await.expect(StatusCode::CREATED);
    assert_vm_public(&vm);
    assert_eq!((vm["cpu"].as_u64(), vm["memMb"].as_u64(), vm["diskSizeMb"].as_u64()), (Some(1), Some(256), Some(64)));
    assert_eq!(vm["outboundInternet"], false);
    assert_eq!(vm["network"]["allowIps"], json!(["1.2.3.4/32"]));
}

#[tokio::test]
async fn create_refuses_a_bad_body_with_400_and_a_missing_snapshot_with_404_each_with_a_message() {
    let api = Api::new(&[]);
    for (body, needle) in [
        (json!({"memMb": 256, "allowIps": []}), "cpu"),
        (json!({"cpu": 1, "allowIps": []}), "memMb"),
        (json!({"cpu": "two", "memMb": 256, "allowIps": []}), "cpu"),
        (json!({"cpu": 1, "memMb": 256, "outboundInternet": "yes"}), "outboundInternet"),
    ] {
        api.call(Method::POST, "/v1/vms", Some(body)).await.expect_message(StatusCode::BAD_REQUEST, needle);
    }
    // §1.6.1: a baseline that does not exist is the original's 404 "User overlay snapshot not found".
    for field in ["userOverlaySnapshotId", "snapshotId"] {
        let body = json!({"cpu": 1, "memMb": 256, "allowIps": [], field: "snap-1"});
        api.call(Method::POST, "/v1/vms", Some(body)).await.expect_message(StatusCode::NOT_FOUND, "snapshot not found");
    }
    let list = api.call(Method::GET, "/v1/vms", None).await.expect(StatusCode::OK);
    assert_eq!(list, json!([]), "a refused create leaves no VM behind");
}

/// §1.5: the snapshot list answers an array for each scope and 400 for another; a runtime that
/// takes no snapshots answers 501 naming itself, a missing VM 404.
#[tokio::test]
async fn snapshot_routes_answer_the_original_statuses() {
    let api = Api::new(&[]);
    for scope in ["", "?scope=user", "?scope=internal", "?scope=all"] {
        let list = api.call(Method::GET, &format!("/v1/snapshots{scope}"), None).await.expect(StatusCode::OK);
        assert_eq!(list, json!([]), "{scope}");
    }
    api.call(Method::GET, "/v1/snapshots?scope=mine", None).await.expect_message(StatusCode::BAD_REQUEST, "scope");
    let id = api.vm().await;
    api.call(Method::POST, &format!("/v1/vms/{id}/snapshots"), None)
        .await
        .expect_message(StatusCode::NOT_IMPLEMENTED, "snapshots");
    api.call(Method::POST, "/v1/vms/nope/snapshots", None).await.expect(StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn stop_start_delete_answer_204_and_the_wrong_state_409_with_a_message() {
    let api = Api::new(&[]);
    let id = api.vm().await;
    api.call(Method::POST, &format!("/v1/vms/{id}/stop"), None).await.expect_no_content();
    let vm = api.call(Method::GET, &format!("/v1/vms/{id}"), None).await.expect(StatusCode::OK);
    assert_vm_public(&vm);
    assert_eq!(vm["state"], "STOPPED");
    api.call(Method::POST, &format!("/v1/vms/{id}/stop"), None).await.expect_message(StatusCode::CONFLICT, "RUNNING");
    // §12.2 test 44: exec on a stopped VM answers a status >= 400.
    api.call(Method::POST, &format!("/v1/vms/{id}/exec"), Some(json!({"cmd": "true"})))
        .await
        .expect_message(StatusCode::CONFLICT, "RUNNING");
    api.call(Method::POST, &format!("/v1/vms/{id}/start"), None).await.expect_no_content();
    api.call(Method::DELETE, &format!("/v1/vms/{id}"), None).await.expect_no_content();
    api.call(Method::GET, &format!("/v1/vms/{id}"), None).await.expect_message(StatusCode::NOT_FOUND, &id);
    api.call(Method::DELETE, &format!("/v1/vms/{id}"), None).await.expect_message(StatusCode::NOT_FOUND, &id);
}

// ---------------------------------------------------------------------------------------------
// §1.6.2–1.6.4 exec, run-ts, run-js

#[tokio::test]
async fn exec_answers_200_exit_code_stdout_stderr_for_the_originals_body() {
    let api = Api::new(&[]);
    let id = api.vm().await;
    // In-process, /workspace is a host directory: its last component is what can be checked.
    let cmd = "echo \"$GREETING\"; basename \"$PWD\"; echo err >&2";
    let body = json!({"cmd": cmd, "cwd": "/workspace", "env": {"GREETING": "hi"}, "timeoutMs": "10000"});
    let r = api.call(Method::POST, &format!("/v1/vms/{id}/exec"), Some(body)).await.expect(StatusCode::OK);
    assert_eq!(r["exitCode"], 0, "{r}");
    assert_eq!(r["stdout"], "hi\nworkspace\n", "{r}");
    assert_eq!(r["stderr"], "err\n", "{r}");
    let r = api.call(Method::POST, &format!("/v1/vms/{id}/exec"), Some(json!({"cmd": "exit 3"}))).await;
    assert_eq!(r.expect(StatusCode::OK)["exitCode"], 3);
    api.call(Method::POST, &format!("/v1/vms/{id}/exec"), Some(json!({"cwd": "/workspace"})))
        .await
        .expect_message(StatusCode::BAD_REQUEST, "cmd");
    // §12.1 test 13: an id built from a missing value.
    for bad in ["undefined", "null", "%20"] {
        api.call(Method::POST, &format!("/v1/vms/{bad}/exec"), Some(json!({"cmd": "id"})))
            .await
            .expect_message(StatusCode::BAD_REQUEST, "Invalid VM id");
    }
}

#[tokio::test]
async fn run_ts_and_run_js_take_the_originals_body_and_answer_result_or_error() {
    let api = Api::new(&[]);
    let id = api.vm().await;
    let caps = api.state.capabilities.clone();
    for (route, flags, harmless, available, code) in [
        (
            "run-ts",
            "denoFlags",
            json!(["--no-check", "--quiet"]),
            caps.deno,
            "console.log(Deno.env.get('A')); result.set({ok: true, n: 123})",
        ),
        (
            "run-js",
            "nodeFlags",
            json!(["--no-warnings"]),
            caps.node,
            "console.log(process.env.A); result.set({ok: true, n: 123})",
        ),
    ] {
        let path = format!("/v1/vms/{id}/{route}");
        // Every field of the original's body, with its env as a `KEY=value` list and flags such as
        // the n8n node's example.
        let body = json!({"code": code, "args": [], flags: harmless, "timeoutMs": 20000, "env": ["A=from-env"]});
        let reply = api.call(Method::POST, &path, Some(body)).await;
        if !available {
            reply.expect_message(StatusCode::NOT_IMPLEMENTED, "");
            rds_testkit::skip(format!("{route}: the interpreter is not installed; only the refusals are checked"));
        } else {
            let r = reply.expect(StatusCode::OK);
            assert_eq!(r["exitCode"], 0, "{route}: {r}");
            assert_eq!(r["stdout"], "from-env\n", "{route}: {r}");
            assert!(r["stderr"].is_string(), "{route}: {r}");
            assert_eq!(r["result"], json!({"ok": true, "n": 123}), "{route}: {r}");
            let failed = json!({"code": "result.error({code: 'E_TEST', detail: 'boom'})"});
            let r = api.call(Method::POST, &path, Some(failed)).await.expect(StatusCode::OK);
            assert_ne!(r["exitCode"], 0, "{route}: {r}");
            assert_eq!(r["error"], json!({"code": "E_TEST", "detail": "boom"}), "{route}: {r}");
        }
        // Flags that could widen what the run may do: refused by name, never dropped silently.
        let body = json!({"code": "1", flags: ["--allow-all"]});
        api.call(Method::POST, &path, Some(body)).await.expect_message(StatusCode::BAD_REQUEST, flags);
        // §12.2 tests 24 and 27: a path outside /workspace is a 400.
        let body = json!({"path": "/home/user/app/main.ts"});
        api.call(Method::POST, &path, Some(body)).await.expect_message(StatusCode::BAD_REQUEST, "");
    }
}

// ---------------------------------------------------------------------------------------------
// §1.6 files, §12.2 tests 12–18

#[tokio::test]
async fn upload_answers_204_with_no_body_and_download_answers_the_tar_gz() {
    let api = Api::new(&[]);
    let id = api.vm().await;
    let archive = tar_gz(&[("hello.txt", b"hello run-dat-sheesh")]);
    api.raw(Method::POST, &format!("/v1/vms/{id}/files/upload?dest=/workspace/project"), "application/gzip", archive)
        .await
        .expect_no_content();

    let down =
        api.raw(Method::GET, &format!("/v1/vms/{id}/files/download?path=/workspace/project"), "", Body::empty()).await;
    assert_eq!(down.status, StatusCode::OK, "{}", down.text());
    assert_eq!(down.content_type.as_deref(), Some("application/gzip"));
    let files = untar_gz(&down.body);
    assert!(
        files.iter().any(|(p, d)| p.ends_with("hello.txt") && d == b"hello run-dat-sheesh"),
        "{:?}",
        files.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn files_routes_answer_400_and_413_with_a_message() {
    let api = Api::new(&[("MAX_UPLOAD_BYTES", "1024")]);
    let id = api.vm().await;
    let small = || tar_gz(&[("a", b"a")]);
    let upload = |q: &str| format!("/v1/vms/{id}/files/upload{q}");
    api.raw(Method::POST, &upload(""), "application/gzip", small())
        .await
        .expect_message(StatusCode::BAD_REQUEST, "dest");
    for dest in ["/home/user/project", "/etc"] {
        api.raw(Method::POST, &upload(&format!("?dest={dest}")), "application/gzip", small())
            .await
            .expect_message(StatusCode::BAD_REQUEST, "");
    }
    // Random bytes do not compress: over MAX_UPLOAD_BYTES, a 413 the client can read.
    let noise: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    api.raw(Method::POST, &upload("?dest=/workspace"), "application/gzip", tar_gz(&[("big", &noise)]))
        .await
        .expect_message(StatusCode::PAYLOAD_TOO_LARGE, "MAX_UPLOAD_BYTES");
    let download = |q: &str| format!("/v1/vms/{id}/files/download{q}");
    api.call(Method::GET, &download(""), None).await.expect_message(StatusCode::BAD_REQUEST, "path");
    for path in ["/etc", "/home/user/project"] {
        api.call(Method::GET, &download(&format!("?path={path}")), None)
            .await
            .expect_message(StatusCode::BAD_REQUEST, "");
    }
}

// ---------------------------------------------------------------------------------------------
// §1.3 images

/// The fields of the original's image list item, with their types.
#[track_caller]
fn assert_image_item(image: &Value) {
    let obj = image.as_object().unwrap_or_else(|| panic!("an image is an object: {image}"));
    assert!(obj["id"].as_str().is_some_and(|id| id.starts_with("img-")), "{image}");
    assert!(obj["name"].is_string() && obj["description"].is_string(), "{image}");
    assert!(obj.contains_key("createdAt"), "{image}");
    for field in ["isDefault", "hasKernel", "hasRootfs"] {
        assert!(obj[field].is_boolean(), "{field}: {image}");
    }
    for field in ["kernelFilename", "rootfsFilename", "seedSnapshotId", "seedStatus", "seedUpdatedAt", "seedError"] {
        assert!(obj.get(field).is_some_and(|v| v.is_string() || v.is_null()), "{field}: {image}");
    }
    assert!(obj.get("baseRootfsBytes").is_some_and(|v| v.is_u64() || v.is_null()), "{image}");
}

#[tokio::test]
async fn images_answer_the_originals_fields_and_errors_with_a_message() {
    let api = Api::new(&[]);
    let created = api
        .call(Method::POST, "/v1/images", Some(json!({"name": "debian", "description": "test image"})))
        .await
        .expect(StatusCode::CREATED);
    assert_image_item(&created);
    assert_eq!((&created["kernelFilename"], &created["rootfsFilename"]), (&Value::Null, &Value::Null));
    assert_eq!(created["baseRootfsBytes"], Value::Null);
    let id = created["id"].as_str().unwrap().to_string();

    // Part uploads answer 204 with no body, as the original's integration harness expects.
    let mut rootfs = vec![0u8; 4096];
    rootfs[1080..1082].copy_from_slice(&[0x53, 0xef]);
    api.raw(Method::PUT, &format!("/v1/images/{id}/rootfs"), "application/octet-stream", rootfs.clone())
        .await
        .expect_no_content();
    let kernel = [b"\x7fELF".as_slice(), &[0u8; 2000]].concat();
    api.raw(Method::PUT, &format!("/v1/images/{id}/kernel"), "application/octet-stream", kernel)
        .await
        .expect_no_content();

    let list = api.call(Method::GET, "/v1/images", None).await.expect(StatusCode::OK);
    let item = &list.as_array().expect("a list")[0];
    assert_image_item(item);
    assert_eq!(item["kernelFilename"], "vmlinux", "{item}");
    assert_eq!(item["rootfsFilename"], "rootfs.ext4", "{item}");
    assert_eq!(item["baseRootfsBytes"], 4096, "{item}");
    assert_eq!((&item["hasKernel"], &item["hasRootfs"]), (&json!(true), &json!(true)));
    for field in ["seedSnapshotId", "seedStatus", "seedUpdatedAt", "seedError"] {
        assert_eq!(item[field], Value::Null, "no seed snapshots here: {item}");
    }

    assert_eq!(item["isDefault"], false);
    api.call(Method::POST, &format!("/v1/images/{id}/set-default"), None).await.expect_no_content();
    let list = api.call(Method::GET, "/v1/images", None).await.expect(StatusCode::OK);
    assert_eq!(list[0]["isDefault"], true, "{list}");
    // A bundle (ours is a tar.gz of the parts) answers 204 too.
    let other = api
        .call(Method::POST, "/v1/images", Some(json!({"name": "bundled", "description": "test image"})))
        .await
        .expect(StatusCode::CREATED)["id"]
        .as_str()
        .unwrap()
        .to_string();
    api.raw(
        Method::PUT,
        &format!("/v1/images/{other}/bundle"),
        "application/gzip",
        tar_gz(&[("rootfs.ext4", &rootfs)]),
    )
    .await
    .expect_no_content();
    api.call(Method::DELETE, &format!("/v1/images/{other}"), None).await.expect_no_content();

    let missing = "img-00000000-0000-4000-8000-000000000000";
    api.call(Method::POST, &format!("/v1/images/{missing}/set-default"), None)
        .await
        .expect_message(StatusCode::NOT_FOUND, "");
    api.call(Method::POST, "/v1/images", Some(json!({"name": "", "description": "x"})))
        .await
        .expect_message(StatusCode::BAD_REQUEST, "name");
    api.call(Method::DELETE, &format!("/v1/images/{id}"), None).await.expect_no_content();
    api.call(Method::DELETE, &format!("/v1/images/{id}"), None).await.expect_message(StatusCode::NOT_FOUND, "");
}

// ---------------------------------------------------------------------------------------------
// OpenAPI

#[tokio::test]
async fn openapi_shows_the_top_level_error_message_and_the_204_upload() {
    let api = Api::new(&[]);
    let doc = api.send(Request::get("/openapi.json").body(Body::empty()).unwrap()).await.expect(StatusCode::OK);
    let error = &doc["components"]["schemas"]["ErrorBody"];
    assert_eq!(error["properties"]["message"]["type"], "string", "{error}");
    assert!(error["properties"]["error"].is_object(), "{error}");
    let upload = &doc["paths"]["/v1/vms/{id}/files/upload"]["post"]["responses"];
    assert!(upload["204"].is_object() && upload.get("200").is_none(), "{upload}");
    let vm = &doc["components"]["schemas"]["VmView"]["properties"];
    assert!(vm["guestIp"].is_object() && vm["provisionMode"].is_object(), "{vm}");
    for (method, path) in [
        ("put", "/v1/images/{id}/kernel"),
        ("put", "/v1/images/{id}/rootfs"),
        ("put", "/v1/images/{id}/bundle"),
        ("post", "/v1/images/{id}/set-default"),
    ] {
        let responses = &doc["paths"][path][method]["responses"];
        assert!(responses["204"].is_object() && responses.get("200").is_none(), "{method} {path}: {responses}");
    }
    let logs = &doc["components"]["schemas"]["LogView"]["properties"];
    for field in ["type", "lines", "truncated", "updatedAt"] {
        assert!(logs[field].is_object(), "{field}: {logs}");
    }
    let params = doc["paths"]["/v1/vms/{id}/logs"]["get"]["parameters"].as_array().expect("logs parameters").clone();
    let names: Vec<&str> = params.iter().filter_map(|p| p["name"].as_str()).collect();
    assert!(names.contains(&"type") && names.contains(&"tail"), "{names:?}");
}

// ---------------------------------------------------------------------------------------------
// §1.1 rate limits and body limits

/// `x-ratelimit-limit` of a reply.
#[track_caller]
fn limit_header(reply: &Reply) -> u32 {
    let v = reply.headers.get("x-ratelimit-limit").unwrap_or_else(|| panic!("no x-ratelimit-limit: {}", reply.text()));
    v.to_str().unwrap().parse().expect("a number")
}

#[tokio::test]
async fn rate_limits_default_to_the_originals_per_route_budgets() {
    let api = Api::new(&[]);
    let create = api.call(Method::POST, "/v1/vms", Some(json!({"cpu": 1, "memMb": 256, "allowIps": []}))).await;
    assert_eq!(limit_header(&create), 30, "POST /v1/vms");
    let id = create.expect(StatusCode::CREATED)["id"].as_str().unwrap().to_string();
    let exec = api.call(Method::POST, &format!("/v1/vms/{id}/exec"), Some(json!({"cmd": "true"}))).await;
    assert_eq!(limit_header(&exec), 300, "exec");
    for route in ["run-ts", "run-js"] {
        let run = api.call(Method::POST, &format!("/v1/vms/{id}/{route}"), Some(json!({"code": "1"}))).await;
        assert_eq!(limit_header(&run), 60, "{route}");
    }
    let archive = tar_gz(&[("a.txt", b"a")]);
    let upload = format!("/v1/vms/{id}/files/upload?dest=/workspace");
    let up = api.raw(Method::POST, &upload, "application/gzip", archive).await;
    assert_eq!(limit_header(&up), 30, "upload");
    let down = api.call(Method::GET, &format!("/v1/vms/{id}/files/download?path=/workspace"), None).await;
    assert_eq!(limit_header(&down), 60, "download");
    // Every other route shares the global budget of 120 a minute: the 121st request is refused...
    let mut last = None;
    for n in 1..=120 {
        let r = api.call(Method::GET, "/v1/vms", None).await;
        assert_eq!(r.status, StatusCode::OK, "request {n}: {}", r.text());
        last = Some(r);
    }
    let last = last.unwrap();
    assert_eq!((limit_header(&last), last.headers["x-ratelimit-remaining"].to_str().unwrap()), (120, "0"));
    let refused = api.call(Method::GET, &format!("/v1/vms/{id}"), None).await;
    refused.expect_message(StatusCode::TOO_MANY_REQUESTS, "RATE_LIMIT_PER_MIN=120");
    assert!(refused.headers.contains_key(header::RETRY_AFTER), "429 has Retry-After");
    assert_eq!(refused.headers["x-ratelimit-remaining"], "0");
    // ... while a route with its own budget still answers.
    api.call(Method::POST, &format!("/v1/vms/{id}/exec"), Some(json!({"cmd": "true"}))).await.expect(StatusCode::OK);
    // The docs routes are never limited (§1.1 allow-list).
    let doc = api.send(Request::get("/openapi.json").body(Body::empty()).unwrap()).await;
    assert_eq!(doc.status, StatusCode::OK);
}

#[tokio::test]
async fn a_create_past_its_budget_answers_429_while_exec_still_passes() {
    // The original's 31st create in a minute, with the budget configured down to 3 to stay fast.
    let api = Api::new(&[("RATE_LIMIT_CREATE_PER_MIN", "3")]);
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(api.vm().await);
    }
    let refused = api.call(Method::POST, "/v1/vms", Some(json!({"cpu": 1, "memMb": 256, "allowIps": []}))).await;
    refused.expect_message(StatusCode::TOO_MANY_REQUESTS, "RATE_LIMIT_CREATE_PER_MIN=3");
    let retry: u64 = refused.headers[header::RETRY_AFTER].to_str().unwrap().parse().expect("Retry-After is seconds");
    assert!((1..=60).contains(&retry), "the window is a minute: {retry}");
    assert_eq!((limit_header(&refused), refused.headers["x-ratelimit-remaining"].to_str().unwrap()), (3, "0"));
    let list = api.call(Method::GET, "/v1/vms", None).await.expect(StatusCode::OK);
    assert_eq!(list.as_array().unwrap().len(), 3, "the refused create made no VM");
    let r = api.call(Method::POST, &format!("/v1/vms/{}/exec", ids[0]), Some(json!({"cmd": "echo ok"}))).await;
    assert_eq!(r.expect(StatusCode::OK)["stdout"], "ok\n");
}

#[tokio::test]
async fn json_bodies_are_limited_to_64_kib_and_exec_bodies_to_1_mib() {
    let api = Api::new(&[]);
    let id = api.vm().await;
    // 64 KiB (the original's jsonSmall) for a create: one allowIps entry padded past it.
    let padded = json!({"cpu": 1, "memMb": 256, "allowIps": ["1.2.3.4/32"], "imageId": "x".repeat(65 << 10)});
    api.call(Method::POST, "/v1/vms", Some(padded))
        .await
        .expect_message(StatusCode::PAYLOAD_TOO_LARGE, "MAX_JSON_BODY_BYTES=65536");
    // 1 MiB (jsonMedium) for exec: 100 KiB of command is fine, past 1 MiB is a 413.
    let cmd = format!("echo ok #{}", "x".repeat(100 << 10));
    let r = api.call(Method::POST, &format!("/v1/vms/{id}/exec"), Some(json!({"cmd": cmd}))).await;
    assert_eq!(r.expect(StatusCode::OK)["stdout"], "ok\n");
    let cmd = format!("echo ok #{}", "x".repeat(1 << 20));
    api.call(Method::POST, &format!("/v1/vms/{id}/exec"), Some(json!({"cmd": cmd})))
        .await
        .expect_message(StatusCode::PAYLOAD_TOO_LARGE, "MAX_EXEC_BODY_BYTES=1048576");
    for route in ["run-ts", "run-js"] {
        let code = format!("//{}", "x".repeat(1 << 20));
        api.call(Method::POST, &format!("/v1/vms/{id}/{route}"), Some(json!({"code": code})))
            .await
            .expect_message(StatusCode::PAYLOAD_TOO_LARGE, "MAX_EXEC_BODY_BYTES");
    }
}

/// Sends `body` whole over a real connection before reading anything, as a client that does not
/// use `Expect: 100-continue` does (Node's fetch in the original's tests), and returns the status
/// and the JSON body of the answer. `chunked` sends it without a Content-Length.
fn send_whole_then_read(addr: std::net::SocketAddr, path: &str, body: &[u8], chunked: bool) -> (u16, Value) {
    use std::io::{BufRead, BufReader, Read, Write};
    let mut conn = std::net::TcpStream::connect(addr).expect("connect");
    conn.set_read_timeout(Some(std::time::Duration::from_secs(60))).unwrap();
    let length =
        if chunked { "Transfer-Encoding: chunked".to_string() } else { format!("Content-Length: {}", body.len()) };
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {KEY}\r\nContent-Type: application/gzip\r\n{length}\r\n\
         Connection: close\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).expect("writing the request head");
    let sent = if chunked {
        body.chunks(64 << 10)
            .try_for_each(|c| {
                conn.write_all(format!("{:x}\r\n", c.len()).as_bytes())
                    .and(conn.write_all(c))
                    .and(conn.write_all(b"\r\n"))
            })
            .and(conn.write_all(b"0\r\n\r\n"))
    } else {
        conn.write_all(body)
    };
    if let Err(e) = sent {
        panic!("the server broke the connection while the body was being sent: {e}");
    }
    let mut reader = BufReader::new(conn);
    let mut status_line = String::new();
    reader.read_line(&mut status_line).expect("reading the status line (not a reset connection)");
    let status =
        status_line.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("{status_line:?}"));
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest).expect("reading the answer (not a reset connection)");
    let text = String::from_utf8_lossy(&rest).into_owned();
    let json = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
    (status, serde_json::from_str(json).unwrap_or_else(|e| panic!("body is not JSON ({e}): {text}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_11_mib_upload_without_expect_continue_reads_413_with_a_message() {
    let api = Api::new(&[]);
    let id = api.vm().await;
    // Served as `rds serve` serves it, on a real socket: a reset would show here, not in `oneshot`.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binding a port");
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(std::future::IntoFuture::into_future(axum::serve(listener, api.router.clone())));
    let path = format!("/v1/vms/{id}/files/upload?dest=/workspace");
    for chunked in [false, true] {
        let path = path.clone();
        // §12.2 test 13: 11 MiB of zeros, over the default MAX_UPLOAD_BYTES of 10 MiB.
        let (status, body) =
            tokio::task::spawn_blocking(move || send_whole_then_read(addr, &path, &vec![0u8; 11 << 20], chunked))
                .await
                .expect("the client thread");
        assert_eq!(status, 413, "chunked={chunked}: {body}");
        let message = body["message"].as_str().unwrap_or_else(|| panic!("no top-level message: {body}"));
        assert!(message.contains("MAX_UPLOAD_BYTES=10485760"), "chunked={chunked}: {message}");
    }
    server.abort();
    // Nothing of it was kept.
    let r = api.call(Method::POST, &format!("/v1/vms/{id}/exec"), Some(json!({"cmd": "ls -A; echo done"}))).await;
    assert_eq!(r.expect(StatusCode::OK)["stdout"], "done\n");
}

// ---------------------------------------------------------------------------------------------
// §1.6 logs

#[tokio::test]
async fn logs_answer_type_lines_truncated_and_updated_at_for_the_originals_types() {
    let api = Api::new(&[]);
    let id = api.vm().await;
    let logs = |q: &str| format!("/v1/vms/{id}/logs{q}");
    let console = api.call(Method::GET, &logs(""), None).await.expect(StatusCode::OK);
    assert_eq!(console["type"], "console", "{console}");
    assert_eq!(console["truncated"], false, "{console}");
    let lines = console["lines"].as_array().unwrap_or_else(|| panic!("lines: {console}"));
    assert!(lines.iter().any(|l| l.as_str().is_some_and(|l| l.contains("rds-agent serving"))), "{console}");
    let updated = console["updatedAt"].as_str().unwrap_or_else(|| panic!("updatedAt: {console}"));
    assert!(updated.len() == 24 && updated.ends_with('Z') && updated.as_bytes()[10] == b'T', "ISO-8601: {updated}");
    // The original's serial-console names read our console log; the type comes back as sent.
    for name in ["firecracker.stdout.log", "firecracker.stderr.log"] {
        let r = api.call(Method::GET, &logs(&format!("?type={name}&tail=1")), None).await.expect(StatusCode::OK);
        assert_eq!((&r["type"], &r["lines"]), (&json!(name), &json!([lines.last().unwrap()])), "{r}");
    }
    // `tail` is clamped to 1..1000, never refused.
    for tail in ["0", "-5", "5000"] {
        api.call(Method::GET, &logs(&format!("?tail={tail}")), None).await.expect(StatusCode::OK);
    }
    // A log this runtime does not keep answers the original's shape for a missing file.
    for name in ["firecracker.log", "firecracker", "metrics"] {
        let r = api.call(Method::GET, &logs(&format!("?type={name}")), None).await.expect(StatusCode::OK);
        assert_eq!(r, json!({"type": name, "lines": [], "truncated": false}));
    }
    // So does a console log not written yet.
    std::fs::remove_file(api.state.runtime.console_log(&id)).expect("removing the console log");
    let r = api.call(Method::GET, &logs(""), None).await.expect(StatusCode::OK);
    assert_eq!(r, json!({"type": "console", "lines": [], "truncated": false}));
    let bad = api.call(Method::GET, &logs("?type=../../etc/passwd"), None).await;
    bad.expect_message(StatusCode::BAD_REQUEST, "Invalid log type");
    assert!(bad.text().contains("`type`"), "names the field: {}", bad.text());
}

// ---------------------------------------------------------------------------------------------
// §11 the original's n8n node (`n8n-nodes-run-dat-sheesh` 0.1.8): every operation it offers but
// the snapshot ones (not implemented here yet), sent as the node sends it, checked for what the
// node reads.

/// A request as the node's `runDatsheeshApiRequest` makes it through n8n: the credential's
/// `x-api-key` header; with `json` (the node's default) `accept: application/json` and a JSON
/// body, else the raw body with the node's own content type.
async fn n8n(api: &Api, method: Method, path: &str, body: Option<Value>) -> Reply {
    let req =
        Request::builder().method(method).uri(path).header("x-api-key", KEY).header(header::ACCEPT, "application/json");
    let req = match body {
        Some(b) => req.header(header::CONTENT_TYPE, "application/json").body(Body::from(b.to_string())),
        None => req.body(Body::empty()),
    };
    api.send(req.unwrap()).await
}

/// The same with `json: false`: the node sends no accept header and ignores the answer's body.
async fn n8n_raw(api: &Api, method: Method, path: &str, content_type: Option<&str>, body: Vec<u8>) -> Reply {
    let req = Request::builder().method(method).uri(path).header("x-api-key", KEY);
    let req = match content_type {
        Some(t) => req.header(header::CONTENT_TYPE, t),
        None => req,
    };
    api.send(req.body(Body::from(body)).unwrap()).await
}

#[tokio::test]
async fn every_operation_of_the_originals_n8n_node_gets_what_the_node_reads() {
    let api = Api::new(&[]);
    // Images → List: one n8n item per element, so an array of objects.
    let images = n8n(&api, Method::GET, "/v1/images", None).await.expect(StatusCode::OK);
    assert!(images.as_array().is_some_and(|a| a.iter().all(Value::is_object)), "{images}");

    // VMs → Create, as built from the node's fields (allowIps split on commas, diskSizeMb when > 0).
    // Its default `outboundInternet: true` needs VM networking, which this in-process manager has
    // not: compat_run.rs (rds-cli) runs VMs with egress.
    let body = json!({"cpu": 1, "memMb": 256, "allowIps": ["172.16.0.1/32", "10.0.0.0/8"], "outboundInternet": false, "diskSizeMb": 64});
    let vm = n8n(&api, Method::POST, "/v1/vms", Some(body)).await.expect(StatusCode::CREATED);
    assert_vm_public(&vm);
    assert_eq!(vm["state"], "RUNNING");
    let id = vm["id"].as_str().unwrap().to_string();

    // VMs → List and Get.
    let list = n8n(&api, Method::GET, "/v1/vms", None).await.expect(StatusCode::OK);
    assert!(list.as_array().is_some_and(|a| a.len() == 1 && a.iter().all(Value::is_object)), "{list}");
    let got = n8n(&api, Method::GET, &format!("/v1/vms/{id}"), None).await.expect(StatusCode::OK);
    assert_vm_public(&got);

    // VMs → Execute Command: env from the name/value collection as an object; cwd and timeoutMs
    // only when set.
    let exec = format!("/v1/vms/{id}/exec");
    let body = json!({"cmd": "echo hello $NAME", "cwd": "/workspace", "env": {"NAME": "n8n"}, "timeoutMs": 5000});
    let r = n8n(&api, Method::POST, &exec, Some(body)).await.expect(StatusCode::OK);
    assert_eq!((&r["exitCode"], &r["stdout"], &r["stderr"]), (&json!(0), &json!("hello n8n\n"), &json!("")), "{r}");
    let r = n8n(&api, Method::POST, &exec, Some(json!({"cmd": "echo hello"}))).await.expect(StatusCode::OK);
    assert_eq!(r["stdout"], "hello\n", "{r}");

    // Files → Upload tar.gz (`json: false`, `content-type: application/gzip`, `dest` in the query).
    let archive = tar_gz(&[
        ("main.ts", b"console.log('from-file', Deno.args.join(','))"),
        ("main.js", b"console.log('from-file', process.argv.slice(2).join(','))"),
    ]);
    let up = n8n_raw(
        &api,
        Method::POST,
        &format!("/v1/vms/{id}/files/upload?dest=%2Fworkspace%2Fn8n"),
        Some("application/gzip"),
        archive,
    )
    .await;
    assert!(up.status.is_success(), "{}", up.text());
    // Files → Download tar.gz (`json: false`, `encoding: null`): the bytes, a tar.gz.
    let down =
        n8n_raw(&api, Method::GET, &format!("/v1/vms/{id}/files/download?path=%2Fworkspace%2Fn8n"), None, vec![]).await;
    assert_eq!(down.status, StatusCode::OK, "{}", down.text());
    let files = untar_gz(&down.body);
    assert!(files.iter().any(|(p, _)| p.ends_with("main.ts")), "{:?}", files.iter().map(|f| &f.0).collect::<Vec<_>>());

    // VMs → Run TypeScript / Run JavaScript: code or path, args and flags split on commas, env as
    // `K=V` strings, timeoutMs when set.
    let caps = api.state.capabilities.clone();
    for (route, available, code, path) in [
        (
            "run-ts",
            caps.deno,
            "console.log(Deno.args.join(','), Deno.env.get('K')); result.set({ok: true})",
            "/workspace/n8n/main.ts",
        ),
        (
            "run-js",
            caps.node,
            "console.log(process.argv.slice(2).join(','), process.env.K); result.set({ok: true})",
            "/workspace/n8n/main.js",
        ),
    ] {
        let url = format!("/v1/vms/{id}/{route}");
        let body = json!({"code": code, "args": ["a", "b"], "timeoutMs": 20000, "env": ["K=V"]});
        let reply = n8n(&api, Method::POST, &url, Some(body)).await;
        if !available {
            reply.expect_message(StatusCode::NOT_IMPLEMENTED, "");
            rds_testkit::skip(format!("n8n {route}: the interpreter is not installed; only the refusal is checked"));
            continue;
        }
        let r = reply.expect(StatusCode::OK);
        assert_eq!(
            (&r["exitCode"], &r["stdout"], &r["result"]),
            (&json!(0), &json!("a,b V\n"), &json!({"ok": true})),
            "{route}: {r}"
        );
        assert!(r["stderr"].is_string(), "{route}: {r}");
        let r = n8n(&api, Method::POST, &url, Some(json!({"path": path, "args": ["c"]}))).await.expect(StatusCode::OK);
        assert_eq!((&r["exitCode"], &r["stdout"]), (&json!(0), &json!("from-file c\n")), "{route}: {r}");
    }

    // VMs → Stop, Start, Destroy (`json: false`; the node answers `{success, vmId}` on any 2xx).
    for (method, path) in [(Method::POST, "/stop"), (Method::POST, "/start"), (Method::DELETE, "")] {
        let r = n8n_raw(&api, method.clone(), &format!("/v1/vms/{id}{path}"), None, vec![]).await;
        assert!(r.status.is_success(), "{method} {path}: {}", r.text());
    }
    n8n(&api, Method::GET, &format!("/v1/vms/{id}"), None).await.expect_message(StatusCode::NOT_FOUND, &id);
}
