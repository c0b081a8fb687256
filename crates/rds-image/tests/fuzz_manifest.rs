//! Property tests of `manifest.json` as the builder writes and reads it back (`manifest::Manifest`)
//! and of how its artifact entries are made (`Artifact::of`, `sha256_file`).
//!
//! The manifest type validates nothing beyond JSON types (unknown fields are kept out, not
//! refused; names, sizes and hashes are taken as written), so the properties here are that
//! reading never panics, that what parses is exactly what was written, and that the builder's
//! own entries are well-formed. The manager's checks of uploaded manifests are in rds-manager's
//! `fuzz_image_bundle`.
//!
//! 256 cases per property by default; `PROPTEST_CASES=100000` for a longer run. No regression
//! files are written: a failure found here is kept as a plain `#[test]` instead.

use proptest::prelude::*;
use proptest::sample::{select, Index};
use rds_image::kernel::KernelInfo;
use rds_image::manifest::{sha256_file, Artifact, Manifest};
use rds_image::rootfs::InstalledPackage;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

fn config() -> ProptestConfig {
    ProptestConfig { failure_persistence: None, ..ProptestConfig::default() }
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-z0-9.+~-]{0,16}",
        1 => "\\PC{0,16}",
        1 => select(vec!["../../etc/passwd", "/abs/vmlinux", "", "a\u{0}b", "\"quoted\"", "é🦀"]).prop_map(String::from),
    ]
}

/// Manifests with arbitrary (also hostile) field values: the type stores them as given.
fn manifest() -> impl Strategy<Value = Manifest> {
    let kernel = (text(), text(), text(), text(), text(), prop::collection::vec(text(), 0..4)).prop_map(
        |(choice, version, package, package_version, compression, modules)| KernelInfo {
            choice,
            version,
            package,
            package_version,
            compression,
            modules,
        },
    );
    let packages =
        prop::collection::vec((text(), text()).prop_map(|(name, version)| InstalledPackage { name, version }), 0..4);
    let artifacts = prop::collection::vec(
        (text(), any::<u64>(), prop_oneof!["[0-9a-f]{64}", text()]).prop_map(|(name, size, sha256)| Artifact {
            name,
            size,
            sha256,
        }),
        0..5,
    );
    let build_seconds = prop_oneof![
        (0u64..1_000_000_000_000).prop_map(|ns| std::time::Duration::from_nanos(ns).as_secs_f64()),
        any::<f64>().prop_filter("finite", |f| f.is_finite()),
    ];
    ((text(), text(), any::<u64>(), build_seconds, text()), kernel, (text(), text()), packages, artifacts).prop_map(
        |(
            (builder_version, cache_key, built_at_unix, build_seconds, suite),
            kernel,
            (deno_version, agent_sha256),
            packages,
            artifacts,
        )| {
            Manifest {
                builder_version,
                cache_key,
                built_at_unix,
                build_seconds,
                suite,
                kernel,
                deno_version,
                agent_sha256,
                packages,
                artifacts,
            }
        },
    )
}

/// A JSON tree of any shape.
fn json_tree() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f).map(Value::Number)),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 32, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((text(), inner), 0..5).prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// Edits of a valid manifest's JSON: a field (at any depth) removed, replaced by any JSON, or an
/// unknown field added.
#[derive(Debug, Clone)]
enum Edit {
    Remove(Index),
    Replace(Index, Value),
    Add(String, Value),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        any::<Index>().prop_map(Edit::Remove),
        (any::<Index>(), json_tree()).prop_map(|(i, v)| Edit::Replace(i, v)),
        ("[a-z_]{1,12}", json_tree()).prop_map(|(k, v)| Edit::Add(k, v)),
    ]
}

/// JSON pointers of every object member in `v`.
fn members(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                let p = format!("{at}/{}", k.replace('~', "~0").replace('/', "~1"));
                out.push(p.clone());
                members(child, p, out);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                members(child, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

fn apply(v: &mut Value, edit: &Edit) {
    let mut all = Vec::new();
    members(v, String::new(), &mut all);
    match edit {
        Edit::Remove(i) | Edit::Replace(i, _) if !all.is_empty() => {
            let ptr = &all[i.index(all.len())];
            let (parent, key) = ptr.rsplit_once('/').unwrap();
            let key = key.replace("~1", "/").replace("~0", "~");
            let obj = v.pointer_mut(parent).and_then(Value::as_object_mut).unwrap();
            match edit {
                Edit::Replace(_, new) => {
                    obj.insert(key, new.clone());
                }
                _ => {
                    obj.remove(&key);
                }
            }
        }
        Edit::Add(k, new) => {
            v.as_object_mut().unwrap().insert(k.clone(), new.clone());
        }
        _ => {}
    }
}

/// `v` with members no manifest type declares dropped, at every depth, and numbers in float
/// fields as floats: what a parse keeps.
fn known_part(v: &Value, template: &Value) -> Value {
    match (v, template) {
        (Value::Number(n), Value::Number(t)) if t.is_f64() => n.as_f64().map_or_else(|| v.clone(), Value::from),
        (Value::Object(map), Value::Object(known)) => Value::Object(
            map.iter()
                .filter(|(k, _)| known.contains_key(*k))
                .map(|(k, c)| (k.clone(), known_part(c, &known[k])))
                .collect(),
        ),
        (Value::Array(items), Value::Array(t)) if !t.is_empty() => {
            Value::Array(items.iter().map(|c| known_part(c, &t[0])).collect())
        }
        _ => v.clone(),
    }
}

/// A manifest with one of everything: the shape `known_part` compares against.
fn template() -> Value {
    json!({
        "builder_version": "", "cache_key": "", "built_at_unix": 0, "build_seconds": 0.0, "suite": "",
        "kernel": {"choice": "", "version": "", "package": "", "package_version": "", "compression": "", "modules": [""]},
        "deno_version": "", "agent_sha256": "",
        "packages": [{"name": "", "version": ""}],
        "artifacts": [{"name": "", "size": 0, "sha256": ""}],
    })
}

/// Whether `v` has every member of `template` with a value of its type: what the manifest types
/// require (strings, `u64` sizes and times, a float for the build time, lists, no optional fields).
fn fits(v: &Value, template: &Value) -> bool {
    match template {
        Value::Object(t) => {
            v.as_object().is_some_and(|o| t.iter().all(|(k, tc)| o.get(k).is_some_and(|c| fits(c, tc))))
        }
        Value::Array(t) => v.as_array().is_some_and(|items| items.iter().all(|i| fits(i, &t[0]))),
        Value::String(_) => v.is_string(),
        Value::Number(n) if n.is_f64() => v.is_number(),
        Value::Number(_) => v.is_u64(),
        _ => false,
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn manifests_round_trip_through_their_json(m in manifest()) {
        let text = serde_json::to_string_pretty(&m).unwrap();
        let back: Manifest = serde_json::from_str(&text).unwrap();
        prop_assert_eq!(serde_json::to_value(&back).unwrap(), serde_json::to_value(&m).unwrap());
        prop_assert_eq!(back.artifacts, m.artifacts);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        // Refusal is the expected outcome; what matters is an error rather than a panic, and
        // that anything accepted is a JSON object.
        if serde_json::from_slice::<Manifest>(&bytes).is_ok() {
            prop_assert!(serde_json::from_slice::<Value>(&bytes).unwrap().is_object());
        }
    }

    #[test]
    fn edited_manifests_parse_only_with_every_field_of_the_right_type(m in manifest(), edits in prop::collection::vec(edit(), 1..4)) {
        let mut v = serde_json::to_value(&m).unwrap();
        for e in &edits {
            apply(&mut v, e);
        }
        let parsed = serde_json::from_value::<Manifest>(v.clone());
        prop_assert_eq!(parsed.is_ok(), fits(&v, &template()), "{}: {:?}", v, parsed.as_ref().err());
        if let Ok(parsed) = parsed {
            // What parses is the input minus unknown members, nothing coerced or invented.
            prop_assert_eq!(serde_json::to_value(&parsed).unwrap(), known_part(&v, &template()));
        }
    }

    #[test]
    fn artifacts_record_the_size_and_sha256_of_the_file(data in prop::collection::vec(any::<u8>(), 0..4096), name in "[a-z][a-z.]{0,11}") {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(&name), &data).unwrap();
        let a = Artifact::of(dir.path(), &name).unwrap();
        prop_assert_eq!(&a.name, &name);
        prop_assert_eq!(a.size, data.len() as u64);
        prop_assert_eq!(&a.sha256, &hex::encode(Sha256::digest(&data)));
        prop_assert!(a.sha256.len() == 64 && a.sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        prop_assert_eq!(sha256_file(&dir.path().join(&name)).unwrap(), a.sha256);
    }
}
