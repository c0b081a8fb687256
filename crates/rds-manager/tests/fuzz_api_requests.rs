//! Property tests of the manager's own request bodies (`views`: create VM, network policy,
//! snapshot, image, secrets, peer link) as its JSON extractors parse them, with
//! `rds_proto::parse_json`: arbitrary bytes and generated JSON trees never panic, only objects
//! with documented fields parse, and the lenient fields of `POST /v1/vms` read what the `coerce`
//! rules say. (The shared parser and coerce helpers themselves are fuzzed in rds-proto's
//! `fuzz_requests`.)
//!
//! 256 cases per property by default; `PROPTEST_CASES=100000` for a longer run. No regression
//! files are written: a failure found here is kept as a plain `#[test]` instead.

use std::collections::BTreeSet;

use proptest::prelude::*;
use proptest::sample::select;
use rds_manager::views::{
    CreateImageRequest, CreateSnapshotRequest, CreateVmRequest, PatchNetworkRequest, PatchPeerLinkRequest,
    SecretsRequest,
};
use rds_proto::parse_json;
use serde::de::DeserializeOwned;
use serde_json::{json, Map, Number, Value};
use utoipa::openapi::{RefOr, Schema};
use utoipa::PartialSchema;

fn config() -> ProptestConfig {
    ProptestConfig { failure_persistence: None, ..ProptestConfig::default() }
}

/// A request type's documented fields: (all, required), from its OpenAPI schema.
fn fields<T: PartialSchema>() -> (BTreeSet<String>, BTreeSet<String>) {
    match T::schema() {
        RefOr::T(Schema::Object(o)) => (o.properties.keys().cloned().collect(), o.required.into_iter().collect()),
        _ => panic!("a request schema is an inline object"),
    }
}

fn string() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => "\\PC{0,12}",
        3 => select(vec![
            "", "1", "2", "512", " 64 ", "+4", "-1", "1.5", "1e3", "true", "false", "yes", "1.2.3.4", "10.0.0.0/8",
            "::1/128", "example.com", "*.example.com", "A=1", "KEY=value", "hidden", "mirror", "mounted", "img-x",
            "4294967296",
        ])
        .prop_map(String::from),
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        1 => Just(Value::Null),
        1 => any::<bool>().prop_map(Value::Bool),
        2 => prop_oneof![
            (0u64..5000).prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            (0u32..5000).prop_map(|n| json!(f64::from(n))),
            any::<f64>().prop_filter_map("finite", |f| Number::from_f64(f).map(Value::Number)),
        ],
        3 => string().prop_map(Value::String),
    ]
}

fn json(keys: Vec<String>) -> impl Strategy<Value = Value> {
    leaf().prop_recursive(3, 32, 5, move |inner| {
        let key = prop_oneof![2 => select(keys.clone()), 1 => "\\PC{0,6}"];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((key, inner), 0..5)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Bodies: objects of the type's fields (its required ones usually present), sometimes any JSON.
fn body((fields, required): (BTreeSet<String>, BTreeSet<String>)) -> impl Strategy<Value = Value> {
    let mut names: Vec<String> = fields.into_iter().collect();
    names.extend(["alias", "vmId", "bogus"].map(String::from));
    let value = prop_oneof![4 => leaf(), 1 => prop::collection::vec(string(), 0..3).prop_map(|v| json!(v)), 1 => json(names.clone())];
    let required_value = prop_oneof![(1u32..64).prop_map(Value::from), string().prop_map(Value::String), leaf()];
    let objects = (
        prop::collection::vec(required_value, required.len()),
        prop::collection::vec((select(names.clone()), value), 0..5),
        prop::bool::weighted(0.8),
    )
        .prop_map(move |(values, rest, with_required)| {
            let mut object: Map<String, Value> = rest.into_iter().collect();
            if with_required {
                for (name, v) in required.iter().zip(values) {
                    object.insert(name.clone(), v);
                }
            }
            Value::Object(object)
        });
    prop_oneof![4 => objects, 1 => json(names)]
}

/// Parses `body` as `T`: only JSON objects are bodies, and what parses has only documented
/// fields and every required one.
fn check<T: DeserializeOwned + PartialSchema>(body: &[u8]) -> Result<Option<T>, TestCaseError> {
    let parsed = parse_json::<T>(body);
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        prop_assert_eq!(parsed.as_ref().err().map(String::as_str), Some("invalid body: expected a JSON object"));
    }
    let Ok(request) = parsed else { return Ok(None) };
    let value: Value = serde_json::from_slice(body).expect("a body that parses as a request is JSON");
    let (known, required) = fields::<T>();
    let keys: BTreeSet<String> = value.as_object().expect("an object").keys().cloned().collect();
    prop_assert!(keys.is_subset(&known), "accepted unknown fields {:?}", keys.difference(&known).collect::<Vec<_>>());
    prop_assert!(required.is_subset(&keys), "accepted without {:?}", required.difference(&keys).collect::<Vec<_>>());
    Ok(Some(request))
}

/// The integer a coerced field reads from `v`: an integer, an integral float, or a decimal string.
fn integer_form(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64().filter(|f| f.fract() == 0.0 && (0.0..=9_007_199_254_740_992.0).contains(f)).map(|f| f as u64)
        }),
        Value::String(s) => {
            let t = s.trim();
            let digits = t.strip_prefix('+').unwrap_or(t);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            digits.bytes().try_fold(0u64, |acc, d| acc.checked_mul(10)?.checked_add(u64::from(d - b'0')))
        }
        _ => None,
    }
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..256),
        2 => (body(fields::<CreateVmRequest>()), any::<prop::sample::Index>()).prop_map(|(v, cut)| {
            let mut b = serde_json::to_vec(&v).unwrap();
            b.truncate(cut.index(b.len() + 1).max(1));
            b
        }),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_are_refused_or_parse_with_documented_fields(body in bytes()) {
        check::<CreateVmRequest>(&body)?;
        check::<PatchNetworkRequest>(&body)?;
        check::<CreateSnapshotRequest>(&body)?;
        check::<CreateImageRequest>(&body)?;
        check::<SecretsRequest>(&body)?;
        check::<PatchPeerLinkRequest>(&body)?;
    }

    #[test]
    fn create_vm_bodies_read_their_lenient_fields_by_the_coerce_rules(v in body(fields::<CreateVmRequest>())) {
        let Some(req) = check::<CreateVmRequest>(&serde_json::to_vec(&v).unwrap())? else { return Ok(()) };
        let field = |name: &str| v.get(name).cloned().unwrap_or(Value::Null);
        let u32_of = |name: &str| integer_form(&field(name)).and_then(|n| u32::try_from(n).ok());
        prop_assert_eq!(Some(req.cpu), u32_of("cpu"));
        prop_assert_eq!(Some(req.mem_mb), u32_of("memMb"));
        prop_assert_eq!(req.disk_size_mb, u32_of("diskSizeMb"));
        let outbound = match field("outboundInternet") {
            Value::String(s) => Some(s == "true"),
            other => other.as_bool(),
        };
        prop_assert_eq!(req.outbound_internet, outbound);
        let allow_ips = match field("allowIps") {
            Value::String(s) => Some(vec![s]),
            Value::Array(items) => Some(items.iter().map(|i| i.as_str().unwrap().to_string()).collect()),
            _ => None,
        };
        prop_assert_eq!(req.allow_ips, allow_ips);
    }

    #[test]
    fn network_policy_bodies_parse_only_with_documented_fields(v in body(fields::<PatchNetworkRequest>())) {
        if let Some(req) = check::<PatchNetworkRequest>(&serde_json::to_vec(&v).unwrap())? {
            // The PATCH takes the strict forms only: a boolean and lists of strings.
            prop_assert_eq!(req.outbound_internet, v.get("outboundInternet").and_then(Value::as_bool));
            prop_assert_eq!(req.allow_ips.is_some(), v.get("allowIps").is_some_and(Value::is_array));
            prop_assert_eq!(req.allow_domains.is_some(), v.get("allowDomains").is_some_and(Value::is_array));
        }
    }

    #[test]
    fn snapshot_image_secret_and_peer_bodies_parse_only_with_documented_fields(
        snapshot in body(fields::<CreateSnapshotRequest>()),
        image in body(fields::<CreateImageRequest>()),
        secrets in body(fields::<SecretsRequest>()),
        peer in body(fields::<PatchPeerLinkRequest>()),
    ) {
        check::<CreateSnapshotRequest>(&serde_json::to_vec(&snapshot).unwrap())?;
        check::<CreateImageRequest>(&serde_json::to_vec(&image).unwrap())?;
        check::<SecretsRequest>(&serde_json::to_vec(&secrets).unwrap())?;
        check::<PatchPeerLinkRequest>(&serde_json::to_vec(&peer).unwrap())?;
    }
}
