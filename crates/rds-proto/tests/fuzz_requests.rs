//! Property tests of request-body parsing: `parse_json` with the request types of this crate
//! (exec, run, code context, terminal) on arbitrary bytes and generated JSON trees, and the
//! lenient `coerce` helpers against the forms their documentation names.
//!
//! 256 cases per property by default; `PROPTEST_CASES=100000` for a longer run. No regression
//! files are written: a failure found here is kept as a plain `#[test]` instead.

use std::collections::BTreeSet;

use proptest::prelude::*;
use proptest::sample::select;
use rds_proto::pty::PtyRequest;
use rds_proto::{coerce, parse_json, ContextRequest, ExecRequest, RunRequest};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Number, Value};
use utoipa::openapi::{RefOr, Schema};
use utoipa::PartialSchema;

const NOT_AN_OBJECT: &str = "invalid body: expected a JSON object";

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

// ---------------------------------------------------------------------------------------------
// JSON trees

fn string() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "\\PC{0,12}",
        2 => select(vec![
            "", "x", "true", "false", "null", "ts", "js", "python", "typescript", "javascript", "A=1", "=1", "1A=x",
            "PATH=/bin", "/workspace", "0", "1", "+7", " 42 ", "-1", "1.5", "1e3", "0x10", "4294967296",
            "18446744073709551616",
        ])
        .prop_map(String::from),
    ]
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<u64>().prop_map(Value::from),
        (0u64..100_000).prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| Number::from_f64(f).map(Value::Number)),
        // Integral floats, around the u32 and 2^53 edges too.
        prop_oneof![0u64..100_000, (1u64 << 32) - 2..(1 << 32) + 2, (1u64 << 53) - 2..(1 << 53) + 2]
            .prop_map(|n| json!(n as f64)),
        select(vec![-0.0, -1.0, 0.5, 1e300, f64::MAX, f64::MIN_POSITIVE]).prop_map(|f| json!(f)),
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        1 => Just(Value::Null),
        1 => any::<bool>().prop_map(Value::Bool),
        3 => number(),
        4 => string().prop_map(Value::String),
    ]
}

/// Keys of nested objects: the given field names, environment-variable names good and bad,
/// anything.
fn key(fields: Vec<String>) -> impl Strategy<Value = String> {
    let env = vec!["A", "PATH", "_x", "1A", "A-B", "", "A=B", "é"];
    prop_oneof![
        3 => select(fields),
        2 => select(env).prop_map(String::from),
        1 => "\\PC{0,8}",
    ]
}

/// Arbitrary JSON trees whose object keys are mostly `fields`.
fn json(fields: Vec<String>) -> impl Strategy<Value = Value> {
    leaf().prop_recursive(3, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key(fields.clone()), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Field values shaped like what request fields take, plus anything.
fn field_value(fields: Vec<String>) -> impl Strategy<Value = Value> {
    let env_map = prop::collection::vec((key(vec!["A".into()]), string()), 0..3)
        .prop_map(|kv| Value::Object(kv.into_iter().map(|(k, v)| (k, Value::String(v))).collect()));
    let strings = prop::collection::vec(string(), 0..3).prop_map(|v| json!(v));
    prop_oneof![4 => leaf(), 1 => env_map, 1 => strings, 1 => json(fields)]
}

/// Request bodies: mostly objects of the type's own fields, often with its required ones as
/// strings (so many parse), sometimes any JSON.
fn body((fields, required): (BTreeSet<String>, BTreeSet<String>)) -> impl Strategy<Value = Value> {
    let mut names: Vec<String> = fields.into_iter().collect();
    names.push("bogus".into());
    let named = move |n: std::ops::Range<usize>| {
        prop::collection::vec((select(names.clone()), field_value(names.clone())), n)
            .prop_map(|kv| kv.into_iter().collect::<Map<_, _>>())
    };
    let required_value =
        prop_oneof![select(vec!["ts", "js", "python", "typescript", "javascript"]).prop_map(String::from), string()];
    let with_required =
        (prop::collection::vec(required_value, required.len()), named(0..3)).prop_map(move |(values, mut object)| {
            for (name, value) in required.iter().zip(values) {
                object.insert(name.clone(), Value::String(value));
            }
            Value::Object(object)
        });
    prop_oneof![
        3 => named(0..6).prop_map(Value::Object),
        3 => with_required,
        1 => json(vec!["cmd".into(), "env".into()]),
    ]
}

/// Bytes: anything, or a serialized JSON tree cut or with bytes overwritten.
fn bytes() -> impl Strategy<Value = Vec<u8>> {
    let names: Vec<String> = ["cmd", "code", "language", "timeoutMs", "env"].map(String::from).to_vec();
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..256),
        2 => (json(names), any::<prop::sample::Index>(), prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3))
            .prop_map(|(v, cut, flips)| {
                let mut b = serde_json::to_vec(&v).unwrap();
                for (at, byte) in flips {
                    let i = at.index(b.len());
                    b[i] = byte;
                }
                b.truncate(cut.index(b.len() + 1).max(1));
                b
            }),
    ]
}

// ---------------------------------------------------------------------------------------------
// checks

/// Parses `body` as `T` and checks what is documented of every request type: only JSON objects
/// are bodies, unknown fields are refused, required ones must be there, and what parses
/// re-serializes to a body that parses to the same value.
fn check<T: DeserializeOwned + Serialize + PartialSchema>(body: &[u8]) -> Result<(), TestCaseError> {
    let parsed = parse_json::<T>(body);
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        prop_assert_eq!(parsed.as_ref().err().map(String::as_str), Some(NOT_AN_OBJECT));
    }
    let Ok(request) = parsed else { return Ok(()) };
    let value: Value = serde_json::from_slice(body).expect("a body that parses as a request is JSON");
    let (known, required) = fields::<T>();
    let keys: BTreeSet<String> = value.as_object().expect("an object").keys().cloned().collect();
    prop_assert!(keys.is_subset(&known), "accepted unknown fields {:?}", keys.difference(&known).collect::<Vec<_>>());
    prop_assert!(required.is_subset(&keys), "accepted without {:?}", required.difference(&keys).collect::<Vec<_>>());
    let again = serde_json::to_value(&request).unwrap();
    let reparsed = parse_json::<T>(&serde_json::to_vec(&again).unwrap());
    prop_assert!(reparsed.is_ok(), "{again} does not parse back: {:?}", reparsed.err());
    prop_assert_eq!(serde_json::to_value(reparsed.unwrap()).unwrap(), again);
    Ok(())
}

fn check_all(body: &[u8]) -> Result<(), TestCaseError> {
    check::<ExecRequest>(body)?;
    check::<RunRequest>(body)?;
    check::<ContextRequest>(body)?;
    check::<PtyRequest>(body)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_are_refused_or_parse_consistently(body in bytes()) {
        check_all(&body)?;
    }

    #[test]
    fn exec_bodies_parse_only_with_known_fields(v in body(fields::<ExecRequest>())) {
        check::<ExecRequest>(&serde_json::to_vec(&v).unwrap())?;
    }

    #[test]
    fn run_bodies_parse_only_with_known_fields(v in body(fields::<RunRequest>())) {
        check::<RunRequest>(&serde_json::to_vec(&v).unwrap())?;
    }

    #[test]
    fn context_bodies_parse_only_with_known_fields(v in body(fields::<ContextRequest>())) {
        check::<ContextRequest>(&serde_json::to_vec(&v).unwrap())?;
    }

    #[test]
    fn pty_bodies_parse_only_with_known_fields(v in body(fields::<PtyRequest>())) {
        check::<PtyRequest>(&serde_json::to_vec(&v).unwrap())?;
    }

    #[test]
    fn data_after_the_object_is_refused(
        cmd in "\\PC{1,8}",
        pad in "[ \t\r\n]{0,3}",
        tail in prop::collection::vec(any::<u8>(), 1..16),
    ) {
        let valid = serde_json::to_vec(&json!({ "cmd": cmd })).unwrap();
        prop_assert_eq!(parse_json::<ExecRequest>(&[&valid[..], pad.as_bytes()].concat()).unwrap().cmd, cmd);
        prop_assume!(tail.iter().any(|b| !b.is_ascii_whitespace()));
        let body = [&valid[..], pad.as_bytes(), &tail].concat();
        prop_assert!(parse_json::<ExecRequest>(&body).is_err(), "accepted {:?}", String::from_utf8_lossy(&body));
    }
}

// ---------------------------------------------------------------------------------------------
// coerce

#[derive(Debug, Deserialize)]
struct U32 {
    #[serde(deserialize_with = "coerce::u32")]
    v: u32,
}

#[derive(Debug, Deserialize)]
struct OptU32 {
    #[serde(default, deserialize_with = "coerce::opt_u32")]
    v: Option<u32>,
}

#[derive(Debug, Deserialize)]
struct OptU64 {
    #[serde(default, deserialize_with = "coerce::opt_u64")]
    v: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct OptBool {
    #[serde(default, deserialize_with = "coerce::opt_bool")]
    v: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct OptStrings {
    #[serde(default, deserialize_with = "coerce::opt_strings")]
    v: Option<Vec<String>>,
}

/// The integer a value stands for under the documented rules: a non-negative integer, an
/// integral float (JSON Schema's integers include `3.0`; up to 2^53, where a float still holds
/// every integer), or a string of decimal digits (with an optional `+`, as `"2"` would be
/// coerced) surrounded by whitespace.
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

fn parse_field<T: DeserializeOwned>(v: &Value) -> Result<T, String> {
    parse_json(&serde_json::to_vec(&json!({ "v": v })).unwrap())
}

/// Values a coerced field may be sent: anything, weighted towards numbers, numeric strings and
/// the boolean strings.
fn coercible() -> impl Strategy<Value = Value> {
    let numeric = (
        select(vec!["", " ", "+", "-", "0", "\t"]),
        prop_oneof![any::<u32>().prop_map(u64::from), any::<u64>()],
        select(vec!["", " ", ".0", "e0", "\n", "x"]),
    )
        .prop_map(|(pre, n, post)| Value::String(format!("{pre}{n}{post}")));
    prop_oneof![3 => leaf(), 2 => numeric, 1 => json(vec!["v".into()])]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn integers_are_accepted_as_numbers_integral_floats_and_numeric_strings(n in any::<u32>()) {
        for form in [json!(n), json!(f64::from(n)), json!(n.to_string())] {
            prop_assert_eq!(parse_field::<U32>(&form).map(|b| b.v), Ok(n), "form {}", form);
            prop_assert_eq!(parse_field::<OptU32>(&form).map(|b| b.v), Ok(Some(n)), "form {}", form);
            prop_assert_eq!(parse_field::<OptU64>(&form).map(|b| b.v), Ok(Some(u64::from(n))), "form {}", form);
        }
    }

    #[test]
    fn integer_fields_accept_exactly_the_documented_forms(v in coercible()) {
        let want = integer_form(&v);
        let want_u32 = want.and_then(|n| u32::try_from(n).ok());
        let got = parse_field::<U32>(&v).map(|b| b.v);
        prop_assert_eq!(got.as_ref().ok(), want_u32.as_ref(), "u32 from {}: {:?}", v, got);
        let got = parse_field::<OptU32>(&v).map(|b| b.v);
        let want_opt = if v.is_null() { Some(None) } else { want_u32.map(Some) };
        prop_assert_eq!(got.as_ref().ok(), want_opt.as_ref(), "opt_u32 from {}: {:?}", v, got);
        let got = parse_field::<OptU64>(&v).map(|b| b.v);
        let want_opt = if v.is_null() { Some(None) } else { want.map(Some) };
        prop_assert_eq!(got.as_ref().ok(), want_opt.as_ref(), "opt_u64 from {}: {:?}", v, got);
        if let Err(e) = parse_field::<U32>(&v) {
            prop_assert!(e.contains("`v`") || e.starts_with("malformed JSON"), "error does not name the field: {e}");
        }
    }

    #[test]
    fn boolean_fields_accept_booleans_and_their_strings_only(v in coercible()) {
        let want = match &v {
            Value::Null => Some(None),
            Value::Bool(b) => Some(Some(*b)),
            Value::String(s) if s == "true" => Some(Some(true)),
            Value::String(s) if s == "false" => Some(Some(false)),
            _ => None,
        };
        let got = parse_field::<OptBool>(&v).map(|b| b.v);
        prop_assert_eq!(got.as_ref().ok(), want.as_ref(), "opt_bool from {}: {:?}", v, got);
    }

    #[test]
    fn string_list_fields_accept_a_list_of_strings_or_one_string(v in coercible()) {
        let want = match &v {
            Value::Null => Some(None),
            Value::String(s) => Some(Some(vec![s.clone()])),
            Value::Array(items) => items
                .iter()
                .map(|i| i.as_str().map(String::from))
                .collect::<Option<Vec<_>>>()
                .map(Some),
            _ => None,
        };
        let got = parse_field::<OptStrings>(&v).map(|b| b.v);
        prop_assert_eq!(got.as_ref().ok(), want.as_ref(), "opt_strings from {}: {:?}", v, got);
    }
}

#[test]
fn an_omitted_optional_field_is_none_and_a_required_one_is_refused() {
    assert_eq!(parse_json::<OptU64>(b"{}").map(|b| b.v), Ok(None));
    assert!(parse_json::<U32>(b"{}").unwrap_err().contains("`v`"));
}
