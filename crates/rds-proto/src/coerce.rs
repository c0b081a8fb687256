//! Lenient deserializers matching the original API's validator (AJV `coerceTypes: "array"`):
//! `"2"` is read as the number 2, `"true"` as `true` and a lone string as a one-element list.
//! Each accepts the strict form too, so they only widen what parses.

use serde::de::{self, Deserializer, Unexpected};
use serde::Deserialize;
use serde_json::Value;

// Each reads a `Value` first, so a syntax error in the body keeps serde_json's own message
// (`malformed JSON`) instead of being reported as a wrong type.

fn number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let expected = &"a non-negative integer";
    match Option::<Value>::deserialize(d)? {
        None => Ok(None),
        // JSON Schema's integers include `3.0`.
        Some(Value::Number(n)) => n
            .as_u64()
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && (0.0..=9.007_199_254_740_992e15).contains(f))
                    .map(|f| f as u64)
            })
            .map(Some)
            .ok_or_else(|| de::Error::invalid_value(Unexpected::Other(&n.to_string()), expected)),
        Some(Value::String(t)) => {
            t.trim().parse().map(Some).map_err(|_| de::Error::invalid_value(Unexpected::Str(&t), expected))
        }
        Some(other) => Err(de::Error::invalid_type(unexpected(&other), expected)),
    }
}

fn unexpected(v: &Value) -> Unexpected<'_> {
    match v {
        Value::Null => Unexpected::Unit,
        Value::Bool(b) => Unexpected::Bool(*b),
        Value::Number(_) => Unexpected::Other("a number"),
        Value::String(s) => Unexpected::Str(s),
        Value::Array(_) => Unexpected::Seq,
        Value::Object(_) => Unexpected::Map,
    }
}

/// `u32` from a number or a numeric string.
pub fn u32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    opt_u32(d)?.ok_or_else(|| de::Error::invalid_type(Unexpected::Unit, &"a non-negative integer"))
}

/// Optional `u32` from a number or a numeric string (`null` = omitted).
pub fn opt_u32<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    number(d)?
        .map(|n| u32::try_from(n).map_err(|_| de::Error::invalid_value(Unexpected::Unsigned(n), &"a 32-bit integer")))
        .transpose()
}

/// Optional `u64` from a number or a numeric string (`null` = omitted).
pub fn opt_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    number(d)
}

/// Optional `bool` from a boolean or the strings `"true"` / `"false"` (`null` = omitted).
pub fn opt_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    match Option::<Value>::deserialize(d)? {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(b)),
        Some(Value::String(t)) if t == "true" => Ok(Some(true)),
        Some(Value::String(t)) if t == "false" => Ok(Some(false)),
        Some(other) => Err(de::Error::invalid_type(unexpected(&other), &"a boolean")),
    }
}

/// Optional list of strings; a lone string is a one-element list (`null` = omitted).
pub fn opt_strings<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    let expected = &"a list of strings";
    match Option::<Value>::deserialize(d)? {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(vec![s])),
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                other => Err(de::Error::invalid_type(unexpected(&other), expected)),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(other) => Err(de::Error::invalid_type(unexpected(&other), expected)),
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    #[derive(Deserialize, Debug)]
    struct Body {
        #[serde(deserialize_with = "super::u32")]
        cpu: u32,
        #[serde(default, deserialize_with = "super::opt_u64")]
        timeout: Option<u64>,
        #[serde(default, deserialize_with = "super::opt_bool")]
        flag: Option<bool>,
        #[serde(default, deserialize_with = "super::opt_strings")]
        list: Option<Vec<String>>,
    }

    fn parse(json: &str) -> Result<Body, String> {
        crate::parse_json(json.as_bytes())
    }

    #[test]
    fn integral_floats_are_integers_and_fractions_are_not() {
        assert_eq!(parse(r#"{"cpu":2.0,"timeout":1474595.0}"#).unwrap().timeout, Some(1_474_595));
        assert!(parse(r#"{"cpu":1,"timeout":1.5}"#).unwrap_err().contains("timeout"));
        assert!(parse(r#"{"cpu":1,"timeout":-1.0}"#).unwrap_err().contains("timeout"));
    }

    #[test]
    fn strict_and_coerced_forms_parse_alike() {
        let b = parse(r#"{"cpu":"2","timeout":"500","flag":"true","list":"1.2.3.4/32"}"#).unwrap();
        assert_eq!((b.cpu, b.timeout, b.flag), (2, Some(500), Some(true)));
        assert_eq!(b.list.unwrap(), ["1.2.3.4/32"]);
        let b = parse(r#"{"cpu":2,"timeout":null,"flag":false,"list":["a","b"]}"#).unwrap();
        assert_eq!((b.cpu, b.timeout, b.flag), (2, None, Some(false)));
        assert_eq!(b.list.unwrap(), ["a", "b"]);
    }

    #[test]
    fn values_that_are_not_numbers_or_booleans_are_refused_with_the_field() {
        for (json, field) in [
            (r#"{"cpu":"two"}"#, "cpu"),
            (r#"{"cpu":-1}"#, "cpu"),
            (r#"{"cpu":1.5}"#, "cpu"),
            (r#"{"cpu":1,"flag":"yes"}"#, "flag"),
            (r#"{"cpu":1,"list":[1]}"#, "list"),
            (r#"{"cpu":"99999999999"}"#, "cpu"),
            (r#"{"cpu":null}"#, "cpu"),
        ] {
            let err = parse(json).unwrap_err();
            assert!(err.contains(&format!("`{field}`")), "{json}: {err}");
        }
    }

    #[test]
    fn a_truncated_body_is_still_malformed_json() {
        for json in [r#"{"cpu":"#, r#"{"cpu":1,"flag":"#, r#"{"cpu":1,"list":["a""#] {
            let err = parse(json).unwrap_err();
            assert!(err.starts_with("malformed JSON"), "{json}: {err}");
        }
    }
}
