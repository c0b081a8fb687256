//! The provider manifest: what a provider exports, with JSON Schemas for arguments and results.
//!
//! ```json
//! {
//!   "sdk": { "name": "weather", "description": "Forecasts from ACME Weather" },
//!   "exports": [{
//!     "name": "forecast",                 // proxy function name (identifier)
//!     "module": "src/weather.ts",         // under /workspace: .ts .mts .js .mjs (Deno) or .py (Python)
//!     "function": "forecast",             // optional: the module's export to call (default: name)
//!     "description": "Forecast for a city",
//!     "args": { "type": "object", "properties": { "city": { "type": "string" } }, "required": ["city"] },
//!     "returns": { "type": "object" },    // optional (default: any JSON)
//!     "timeoutMs": 10000                  // optional (default 30000, at most 120000)
//!   }]
//! }
//! ```
//! Every export takes one JSON object of named arguments and returns one JSON value.
//!
//! The original run-dat-sheesh shape is accepted too and normalised to the one above:
//! `{"sdk": {..}, "modules": [{"path", "description"?, "exports": [{"name", "description",
//! "params": [{"name", "description", "schema"}], "returns": {"description", "schema"},
//! "examples": [..]}]}]}`. Its positional `params` become one object of named arguments (all
//! required) and the call passes them to the function in their declared order; a `default`
//! export is named after its module's file stem.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Default per-call timeout of an export.
pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;
/// Longest timeout a manifest may declare.
pub const MAX_TIMEOUT_MS: u64 = 120_000;
/// Largest manifest accepted.
pub const MAX_MANIFEST_BYTES: usize = 1024 * 1024;
const MAX_EXPORTS: usize = 256;

/// A manifest problem, pointing at the field at fault.
#[derive(Debug, thiserror::Error)]
#[error("provider manifest {field}: {message}")]
pub struct ManifestError {
    /// Path of the field, e.g. `exports[1].module`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
    /// The parser's or schema compiler's own error, when one found the problem.
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

fn bad(field: impl Into<String>, message: impl Into<String>) -> ManifestError {
    ManifestError { field: field.into(), message: message.into(), source: None }
}

fn bad_because(
    field: impl Into<String>,
    message: impl Into<String>,
    source: impl std::error::Error + Send + Sync + 'static,
) -> ManifestError {
    ManifestError { field: field.into(), message: message.into(), source: Some(Box::new(source)) }
}

/// Why an export's `args` or `returns` is not a usable JSON Schema.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// Neither an object nor a boolean.
    #[error("must be a JSON Schema (an object)")]
    NotAnObject,
    /// The schema compiler refused it.
    #[error("is not a valid JSON Schema")]
    Invalid(#[source] jsonschema::ValidationError<'static>),
}

/// Why an export's `module` cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModulePathError {
    /// Empty or longer than 512 bytes.
    #[error("must be a relative path of at most 512 bytes")]
    Length,
    /// Absolute, or holding `\\` or NUL.
    #[error("{0:?} must be relative to /workspace")]
    NotRelative(String),
    /// Has an empty, `.` or `..` component.
    #[error("{0:?} must not contain empty, `.` or `..` components")]
    NotNormal(String),
    /// Points into the provider's own `peers/`.
    #[error("{0:?} must not point into the provider's own peers/ directory")]
    IntoPeers(String),
    /// Not a module the bridge can run.
    #[error("{0:?} must be a .ts, .mts, .js, .mjs or .py module")]
    Extension(String),
    /// Holds a character outside `[A-Za-z0-9._/-]`.
    #[error("{0:?} may only contain letters, digits, `.`, `_`, `-` and `/`")]
    Characters(String),
}

/// A call's arguments or result did not match the export's schema.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{pointer}: {message}")]
pub struct SchemaViolation {
    /// JSON pointer into the checked value (`""` for the value itself).
    pub pointer: String,
    pub message: String,
}

/// What the provider describes about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sdk {
    pub name: String,
    pub description: String,
}

/// Language an export's module runs in, from its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModuleLanguage {
    /// `.ts`, `.mts`, `.js`, `.mjs`: run with Deno.
    Deno,
    /// `.py`: run with Python 3.
    Python,
}

/// One callable export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Export {
    pub name: String,
    pub module: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    pub description: String,
    #[serde(default = "any_schema")]
    pub args: Value,
    #[serde(default = "any_schema")]
    pub returns: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Original-shape exports: the argument names, passed to the function positionally in this
    /// order. Only set by normalisation, never read from a manifest of our own shape.
    #[serde(default, skip_deserializing, skip_serializing_if = "Option::is_none")]
    pub positional: Option<Vec<String>>,
}

fn any_schema() -> Value {
    Value::Object(Default::default())
}

impl Export {
    /// The module's function that implements this export.
    pub fn function(&self) -> &str {
        self.function.as_deref().unwrap_or(&self.name)
    }
    /// Call timeout.
    pub fn timeout_ms(&self) -> u64 {
        self.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS)
    }
    /// Language of the module.
    pub fn language(&self) -> ModuleLanguage {
        if self.module.ends_with(".py") {
            ModuleLanguage::Python
        } else {
            ModuleLanguage::Deno
        }
    }
}

/// The manifest as written by the provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub sdk: Sdk,
    pub exports: Vec<Export>,
}

/// A validated manifest with its schemas compiled.
pub struct Provider {
    pub manifest: Manifest,
    validators: BTreeMap<String, (jsonschema::Validator, jsonschema::Validator)>,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider").field("manifest", &self.manifest).finish()
    }
}

impl Provider {
    /// Parses and validates manifest bytes.
    pub fn parse(bytes: &[u8]) -> Result<Provider, ManifestError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(bad("", format!("is larger than {MAX_MANIFEST_BYTES} bytes")));
        }
        let value: Value = serde_json::from_slice(bytes).map_err(|e| bad_because("", "is not valid JSON", e))?;
        if value.get("modules").is_some() {
            let original: OriginalManifest = typed(value)?;
            let (manifest, origins) = original.normalise()?;
            return Provider::new(manifest).map_err(|e| origins.remap(e));
        }
        Provider::new(typed(value)?)
    }

    /// Validates a manifest and compiles its schemas.
    pub fn new(manifest: Manifest) -> Result<Provider, ManifestError> {
        check_text("sdk.name", &manifest.sdk.name, 100)?;
        check_text("sdk.description", &manifest.sdk.description, 2000)?;
        if manifest.exports.is_empty() {
            return Err(bad("exports", "must declare at least one export"));
        }
        if manifest.exports.len() > MAX_EXPORTS {
            return Err(bad("exports", format!("declares more than {MAX_EXPORTS} exports")));
        }
        let mut names = HashSet::new();
        let mut validators = BTreeMap::new();
        for (i, e) in manifest.exports.iter().enumerate() {
            let at = |f: &str| format!("exports[{i}].{f}");
            if !is_identifier(&e.name) {
                return Err(bad(at("name"), format!("{:?} is not an identifier ([A-Za-z_][A-Za-z0-9_]*)", e.name)));
            }
            if !names.insert(e.name.as_str()) {
                return Err(bad(at("name"), format!("duplicate export {:?}", e.name)));
            }
            check_module_path(&e.module).map_err(|m| bad_because(at("module"), "is not a usable module path", m))?;
            if let Some(f) = &e.function {
                if !is_identifier(f) && f != "default" {
                    return Err(bad(at("function"), format!("{f:?} is not an identifier")));
                }
            }
            check_text(&at("description"), &e.description, 4000)?;
            if let Some(t) = e.timeout_ms {
                if t == 0 || t > MAX_TIMEOUT_MS {
                    return Err(bad(at("timeoutMs"), format!("must be between 1 and {MAX_TIMEOUT_MS}")));
                }
            }
            let args = compile(&e.args).map_err(|m| bad_because(at("args"), "is not usable", m))?;
            if let Some(t) = e.args.get("type") {
                if t != "object" {
                    return Err(bad(at("args"), "must describe an object of named arguments (\"type\": \"object\")"));
                }
            }
            let returns = compile(&e.returns).map_err(|m| bad_because(at("returns"), "is not usable", m))?;
            validators.insert(e.name.clone(), (args, returns));
        }
        Ok(Provider { manifest, validators })
    }

    /// The export called `name`, if declared.
    pub fn export(&self, name: &str) -> Option<&Export> {
        self.manifest.exports.iter().find(|e| e.name == name)
    }

    /// Checks call arguments against the export's `args` schema.
    pub fn check_args(&self, export: &str, args: &Value) -> Result<(), SchemaViolation> {
        if !args.is_object() {
            return Err(SchemaViolation { pointer: String::new(), message: "arguments must be a JSON object".into() });
        }
        self.check(export, args, |v| &v.0)
    }

    /// Checks a provider's result against the export's `returns` schema.
    pub fn check_result(&self, export: &str, value: &Value) -> Result<(), SchemaViolation> {
        self.check(export, value, |v| &v.1)
    }

    fn check(
        &self,
        export: &str,
        value: &Value,
        pick: impl Fn(&(jsonschema::Validator, jsonschema::Validator)) -> &jsonschema::Validator,
    ) -> Result<(), SchemaViolation> {
        let Some(v) = self.validators.get(export) else {
            return Err(SchemaViolation { pointer: String::new(), message: format!("unknown export {export:?}") });
        };
        match pick(v).validate(value) {
            Ok(()) => Ok(()),
            Err(e) => Err(SchemaViolation { pointer: e.instance_path().to_string(), message: e.to_string() }),
        }
    }
}

/// Deserialises `value`, naming the first field that does not fit.
fn typed<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, ManifestError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let field = e.path().to_string();
        let field = if field == "." { String::new() } else { field };
        bad_because(field, "does not match the manifest format", e.into_inner())
    })
}

/// The original product's manifest shape (unknown fields ignored, as the original did).
#[derive(Deserialize)]
struct OriginalManifest {
    sdk: OriginalSdk,
    modules: Vec<OriginalModule>,
}

#[derive(Deserialize)]
struct OriginalSdk {
    name: String,
    description: String,
}

#[derive(Deserialize)]
struct OriginalModule {
    path: String,
    exports: Vec<OriginalExport>,
}

#[derive(Deserialize)]
struct OriginalExport {
    name: String,
    description: String,
    #[serde(default)]
    params: Vec<OriginalParam>,
    #[serde(default)]
    returns: Option<OriginalReturns>,
}

#[derive(Deserialize)]
struct OriginalParam {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default = "any_schema")]
    schema: Value,
}

#[derive(Deserialize)]
struct OriginalReturns {
    #[serde(default = "any_schema")]
    schema: Value,
}

/// For each normalised export, where it came from: `(module index, export index)`.
struct Origins(Vec<(usize, usize)>);

impl Origins {
    /// Rewrites a field path of the normalised form (`exports[k].module`) into the original's
    /// (`modules[i].path`), so the provider's author finds the field in their own file.
    fn remap(&self, mut e: ManifestError) -> ManifestError {
        if e.field == "exports" {
            e.field = "modules".into();
            return e;
        }
        let Some(rest) = e.field.strip_prefix("exports[") else { return e };
        let Some((k, rest)) = rest.split_once(']') else { return e };
        let Some(&(i, j)) = k.parse::<usize>().ok().and_then(|k| self.0.get(k)) else { return e };
        e.field = match rest {
            ".module" => format!("modules[{i}].path"),
            ".args" => format!("modules[{i}].exports[{j}].params"),
            ".returns" => format!("modules[{i}].exports[{j}].returns.schema"),
            _ => format!("modules[{i}].exports[{j}]{rest}"),
        };
        e
    }
}

impl OriginalManifest {
    fn normalise(self) -> Result<(Manifest, Origins), ManifestError> {
        let mut exports = Vec::new();
        let mut origins = Vec::new();
        for (i, m) in self.modules.into_iter().enumerate() {
            if m.exports.is_empty() {
                return Err(bad(format!("modules[{i}].exports"), "must declare at least one export"));
            }
            for (j, e) in m.exports.into_iter().enumerate() {
                let at = |f: &str| format!("modules[{i}].exports[{j}].{f}");
                let function = e.name.trim().to_string();
                let name = if function == "default" {
                    stem_identifier(&m.path)
                        .ok_or_else(|| bad(at("name"), format!("cannot name the default export of {:?}", m.path)))?
                } else {
                    function.clone()
                };
                let mut properties = serde_json::Map::new();
                let mut names = Vec::new();
                for (k, p) in e.params.into_iter().enumerate() {
                    let pname = p.name.trim().to_string();
                    if pname.is_empty() || names.contains(&pname) {
                        return Err(bad(at(&format!("params[{k}].name")), "must be a non-empty, unique name"));
                    }
                    if !p.schema.is_object() {
                        return Err(bad(at(&format!("params[{k}].schema")), "must be a JSON Schema (an object)"));
                    }
                    let mut schema = p.schema;
                    if let (Some(d), Some(o)) = (p.description.filter(|d| !d.trim().is_empty()), schema.as_object_mut())
                    {
                        o.entry("description").or_insert(Value::String(d));
                    }
                    properties.insert(pname.clone(), schema);
                    names.push(pname);
                }
                let args = serde_json::json!({
                    "type": "object",
                    "properties": properties,
                    "required": names,
                    "additionalProperties": false,
                });
                exports.push(Export {
                    name,
                    module: m.path.trim().to_string(),
                    function: Some(function),
                    description: e.description.trim().to_string(),
                    args,
                    returns: e.returns.map(|r| r.schema).unwrap_or_else(any_schema),
                    timeout_ms: None,
                    positional: Some(names),
                });
                origins.push((i, j));
            }
        }
        let sdk = Sdk { name: self.sdk.name.trim().to_string(), description: self.sdk.description.trim().to_string() };
        Ok((Manifest { sdk, exports }, Origins(origins)))
    }
}

/// `src/my-tool.ts` → `my_tool`: the name a module's default export gets.
fn stem_identifier(path: &str) -> Option<String> {
    let file = path.rsplit('/').next()?;
    let stem = file.split('.').next()?;
    let mut id: String = stem.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    if id.starts_with(|c: char| c.is_ascii_digit()) {
        id.insert(0, '_');
    }
    is_identifier(&id).then_some(id)
}

fn compile(schema: &Value) -> Result<jsonschema::Validator, SchemaError> {
    if !schema.is_object() && !schema.is_boolean() {
        return Err(SchemaError::NotAnObject);
    }
    jsonschema::validator_for(schema).map_err(SchemaError::Invalid)
}

fn check_text(field: &str, value: &str, max: usize) -> Result<(), ManifestError> {
    if value.trim().is_empty() {
        return Err(bad(field, "must be a non-empty string"));
    }
    if value.len() > max {
        return Err(bad(field, format!("is longer than {max} characters")));
    }
    Ok(())
}

/// True for `[A-Za-z_$][A-Za-z0-9_$]*`-free identifiers usable in TypeScript and Python alike.
pub fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    s.len() <= 128
        && matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

/// A module path must be relative, normalised, inside the workspace, and a supported source file.
pub fn check_module_path(p: &str) -> Result<(), ModulePathError> {
    if p.is_empty() || p.len() > 512 {
        return Err(ModulePathError::Length);
    }
    if p.starts_with('/') || p.contains('\\') || p.contains('\0') {
        return Err(ModulePathError::NotRelative(p.to_string()));
    }
    if p.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return Err(ModulePathError::NotNormal(p.to_string()));
    }
    if p.split('/').next() == Some(crate::PEERS_DIR) {
        return Err(ModulePathError::IntoPeers(p.to_string()));
    }
    const EXTS: [&str; 5] = [".ts", ".mts", ".js", ".mjs", ".py"];
    if !EXTS.iter().any(|x| p.ends_with(x)) {
        return Err(ModulePathError::Extension(p.to_string()));
    }
    if !p.chars().all(|c| c.is_ascii_alphanumeric() || "._-/".contains(c)) {
        return Err(ModulePathError::Characters(p.to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> Value {
        json!({
            "sdk": {"name": "weather", "description": "Forecasts"},
            "exports": [{
                "name": "forecast", "module": "src/weather.ts", "description": "Forecast for a city",
                "args": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
                         "required": ["city"], "additionalProperties": false},
                "returns": {"type": "object", "required": ["temp"]}
            }, {
                "name": "ping", "module": "tools.py", "description": "Liveness"
            }]
        })
    }

    fn parse(v: &Value) -> Result<Provider, ManifestError> {
        Provider::parse(v.to_string().as_bytes())
    }

    #[test]
    fn valid_manifest_parses_with_defaults() {
        let p = parse(&sample()).unwrap();
        let ping = p.export("ping").unwrap();
        assert_eq!(ping.language(), ModuleLanguage::Python);
        assert_eq!(ping.timeout_ms(), DEFAULT_TIMEOUT_MS);
        assert_eq!(ping.function(), "ping");
        assert_eq!(p.export("forecast").unwrap().language(), ModuleLanguage::Deno);
    }

    #[test]
    fn errors_point_at_the_field() {
        type Edit = Box<dyn Fn(&mut Value)>;
        let cases: Vec<(Edit, &str)> = vec![
            (Box::new(|m| m["sdk"]["name"] = json!("")), "sdk.name"),
            (Box::new(|m| m["exports"] = json!([])), "exports"),
            (Box::new(|m| m["exports"][1]["name"] = json!("not-ident")), "exports[1].name"),
            (Box::new(|m| m["exports"][1]["name"] = json!("forecast")), "exports[1].name"),
            (Box::new(|m| m["exports"][0]["module"] = json!("../etc/x.ts")), "exports[0].module"),
            (Box::new(|m| m["exports"][0]["module"] = json!("/abs.ts")), "exports[0].module"),
            (Box::new(|m| m["exports"][0]["module"] = json!("src/x.sh")), "exports[0].module"),
            (Box::new(|m| m["exports"][0]["timeoutMs"] = json!(0)), "exports[0].timeoutMs"),
            (Box::new(|m| m["exports"][0]["args"] = json!({"type": 12})), "exports[0].args"),
            (Box::new(|m| m["exports"][0]["args"] = json!({"type": "array"})), "exports[0].args"),
            (Box::new(|m| m["exports"][0]["bogus"] = json!(1)), "exports[0]"),
            (Box::new(|m| m["exports"][0]["description"] = json!(5)), "exports[0].description"),
        ];
        for (mutate, field) in cases {
            let mut m = sample();
            mutate(&mut m);
            let err = parse(&m).unwrap_err();
            assert!(err.field.starts_with(field), "expected {field}, got {err}");
        }
        let err = Provider::parse(b"{not json").unwrap_err();
        assert!(err.message.contains("not valid JSON"), "{err}");
        let source = std::error::Error::source(&err).expect("the JSON error is kept");
        assert!(source.is::<serde_json::Error>(), "{source:?}");
    }

    #[test]
    fn module_path_and_schema_errors_are_kept_as_the_cause() {
        let mut m = sample();
        m["exports"][0]["module"] = json!("../x.ts");
        let err = parse(&m).unwrap_err();
        let source = std::error::Error::source(&err).expect("a cause");
        assert_eq!(source.downcast_ref::<ModulePathError>(), Some(&ModulePathError::NotNormal("../x.ts".into())));
        let mut m = sample();
        m["exports"][0]["args"] = json!({"type": 12});
        let err = parse(&m).unwrap_err();
        let source = std::error::Error::source(&err).expect("a cause");
        assert!(matches!(source.downcast_ref::<SchemaError>(), Some(SchemaError::Invalid(_))), "{source:?}");
        assert!(std::error::Error::source(source).is_some(), "the compiler's error is kept too");
    }

    fn original() -> Value {
        json!({
            "sdk": {"name": " weather ", "description": "Forecasts"},
            "modules": [{
                "path": "src/weather.ts", "description": "Weather calls",
                "exports": [{
                    "name": "forecast", "description": "Forecast for a city",
                    "params": [
                        {"name": "city", "description": "City name", "schema": {"type": "string"}},
                        {"name": "days", "description": "How many", "schema": {"type": "integer"}}
                    ],
                    "returns": {"description": "The forecast", "schema": {"type": "object"}},
                    "examples": [{"description": "Paris", "code": "await forecast('Paris', 2)"}]
                }]
            }, {
                "path": "lib/my-tool.js",
                "exports": [{"name": "default", "description": "Default", "params": [], "returns": {"description": "x", "schema": {}}, "examples": []}]
            }]
        })
    }

    #[test]
    fn original_shape_normalises_to_named_arguments_passed_positionally() {
        let p = parse(&original()).unwrap();
        assert_eq!(p.manifest.sdk.name, "weather");
        let f = p.export("forecast").unwrap();
        assert_eq!(f.module, "src/weather.ts");
        assert_eq!(f.function(), "forecast");
        assert_eq!(f.positional.as_deref(), Some(&["city".to_string(), "days".to_string()][..]));
        assert_eq!(f.args["properties"]["city"], json!({"type": "string", "description": "City name"}));
        p.check_args("forecast", &json!({"city": "Paris", "days": 2})).unwrap();
        assert_eq!(p.check_args("forecast", &json!({"city": 1, "days": 2})).unwrap_err().pointer, "/city");
        assert!(p.check_args("forecast", &json!({"city": "Paris"})).is_err(), "every param is required");
        assert!(p.check_result("forecast", &json!("text")).is_err());
        let d = p.export("my_tool").expect("default export named after the module");
        assert_eq!(d.function(), "default");
        assert_eq!(d.positional.as_deref(), Some(&[][..]));
        // The normalised form is what consumers get; it serialises in our shape.
        let round = serde_json::to_value(&p.manifest).unwrap();
        assert!(round.get("exports").is_some() && round.get("modules").is_none());
    }

    #[test]
    fn original_shape_errors_name_the_original_field() {
        type Edit = Box<dyn Fn(&mut Value)>;
        let cases: Vec<(Edit, &str)> = vec![
            (Box::new(|m| m["sdk"]["name"] = json!(" ")), "sdk.name"),
            (Box::new(|m| m["sdk"]["description"] = json!(3)), "sdk.description"),
            (Box::new(|m| m["modules"] = json!({})), "modules"),
            (Box::new(|m| m["modules"] = json!([])), "modules"),
            (Box::new(|m| m["modules"][1]["exports"] = json!([])), "modules[1].exports"),
            (Box::new(|m| m["modules"][0]["path"] = json!("../x.ts")), "modules[0].path"),
            (Box::new(|m| m["modules"][1]["path"] = json!("lib/x.sh")), "modules[1].path"),
            (Box::new(|m| m["modules"][0]["exports"][0]["name"] = json!("not-ident")), "modules[0].exports[0].name"),
            (
                Box::new(|m| m["modules"][0]["exports"][0]["description"] = json!("")),
                "modules[0].exports[0].description",
            ),
            (Box::new(|m| m["modules"][0]["exports"][0]["params"] = json!("x")), "modules[0].exports[0].params"),
            (
                Box::new(|m| m["modules"][0]["exports"][0]["params"][1]["schema"] = json!(1)),
                "modules[0].exports[0].params[1].schema",
            ),
            (
                Box::new(|m| m["modules"][0]["exports"][0]["params"][1]["name"] = json!("city")),
                "modules[0].exports[0].params[1].name",
            ),
            (
                Box::new(|m| m["modules"][0]["exports"][0]["returns"]["schema"] = json!({"type": 5})),
                "modules[0].exports[0].returns.schema",
            ),
            (Box::new(|m| m["modules"][1]["exports"][0]["name"] = json!("forecast")), "modules[1].exports[0].name"),
        ];
        for (mutate, field) in cases {
            let mut m = original();
            mutate(&mut m);
            let err = parse(&m).unwrap_err();
            assert!(err.field.starts_with(field), "expected {field}, got {err}");
        }
    }

    #[test]
    fn arguments_and_results_are_checked_with_a_pointer() {
        let p = parse(&sample()).unwrap();
        p.check_args("forecast", &json!({"city": "Paris", "days": 2})).unwrap();
        let v = p.check_args("forecast", &json!({"city": "Paris", "days": 0})).unwrap_err();
        assert_eq!(v.pointer, "/days");
        let v = p.check_args("forecast", &json!({"city": 3})).unwrap_err();
        assert_eq!(v.pointer, "/city");
        assert!(p.check_args("forecast", &json!({})).is_err());
        assert!(p.check_args("forecast", &json!({"city": "x", "extra": 1})).is_err());
        assert!(p.check_args("forecast", &json!(["Paris"])).is_err());
        p.check_result("forecast", &json!({"temp": 3})).unwrap();
        assert!(p.check_result("forecast", &json!("hot")).is_err());
        p.check_result("ping", &json!(null)).unwrap();
    }
}
