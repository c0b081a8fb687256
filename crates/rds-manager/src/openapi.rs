//! The OpenAPI document: the frame (info, security, tags) is here; the operations come from the
//! handlers' `#[utoipa::path]` annotations as [`crate::routes`] registers them.

use rds_proto::ErrorBody;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::Operation;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::openapi::{Content, ObjectBuilder, Ref, RefOr, Type};
use utoipa::{Modify, OpenApi, ToSchema};

/// `GET /openapi.json`, before the routes add their operations.
#[derive(OpenApi)]
#[openapi(
    info(title = "run-dat-sheesh manager API", description = "Run untrusted code in VMs (or, on the sandbox runtime, Linux namespaces)."),
    modifiers(&ApiKeyAuth),
    security(("ApiKeyAuth" = [])),
    tags((name = "vms"), (name = "exec"), (name = "files"), (name = "health"), (name = "peers"), (name = "images"), (name = "snapshots"), (name = "terminals"), (name = "api-keys"))
)]
pub struct ApiDoc;

/// Declares the `X-API-Key` security scheme.
struct ApiKeyAuth;

impl Modify for ApiKeyAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components
            .add_security_scheme("ApiKeyAuth", SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))));
    }
}

/// Documents what every operation behind the API key can answer besides its own responses:
/// 401 (missing or wrong `X-API-Key`) and 429 (request rate or quota exhausted) on all of them,
/// and 404 on those with an `{id}` or `{alias}` in their path. Applied to the protected routes
/// only, so the public ones never claim a 401.
pub struct ProtectedResponses;

impl ProtectedResponses {
    /// The responses added to an operation on `path`, as (status, description, with Retry-After).
    fn responses(path: &str) -> Vec<(&'static str, &'static str, bool)> {
        let mut out = vec![
            ("401", "Missing or invalid `X-API-Key`.", false),
            (
                "429",
                "Request rate of this API key (`RATE_LIMIT_PER_MIN`, or the route's own `RATE_LIMIT_*_PER_MIN`) or a \
                 quota exhausted.",
                true,
            ),
        ];
        if path.contains('{') {
            out.push(("404", "No such resource (or no such route).", false));
        }
        out
    }
}

impl Modify for ProtectedResponses {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        let mut schemas = vec![(ErrorBody::name().into_owned(), <ErrorBody as utoipa::PartialSchema>::schema())];
        ErrorBody::schemas(&mut schemas);
        for (name, schema) in schemas {
            components.schemas.entry(name).or_insert(schema);
        }
        for (path, item) in doc.paths.paths.iter_mut() {
            let ops = [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch];
            for op in ops.into_iter().flatten() {
                add_responses(op, &Self::responses(path));
            }
        }
    }
}

/// Adds `{"error":{"code","message"}}` responses an operation does not document yet (its own
/// description of a status wins; a 429 of its own still gets the `Retry-After` header).
fn add_responses(op: &mut Operation, responses: &[(&str, &str, bool)]) {
    for (status, description, retry_after) in responses {
        let retry_header = || {
            let seconds = ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(1)).build();
            HeaderBuilder::new()
                .schema(seconds)
                .description(Some("Seconds until a request is accepted again (rate limit only)."))
                .build()
        };
        if let Some(existing) = op.responses.responses.get_mut(*status) {
            if let (RefOr::T(existing), true) = (existing, *retry_after) {
                existing.headers.entry("Retry-After".into()).or_insert_with(retry_header);
            }
            continue;
        }
        let content = Content::new(Some(Ref::from_schema_name(ErrorBody::name())));
        let mut response = ResponseBuilder::new().description(*description).content("application/json", content);
        if *retry_after {
            response = response.header("Retry-After", retry_header());
        }
        op.responses.responses.insert(status.to_string(), RefOr::T(response.build()));
    }
}

/// What the served document states from this manager's configuration and what the generated
/// parts cannot carry: `timeoutMs` at most `MAX_EXEC_TIMEOUT_MS`, and the pattern of a snapshot
/// id in its own path (utoipa-axum adds path parameters without their schema's constraints).
pub fn apply_configuration(doc: &mut utoipa::openapi::OpenApi, max_exec_timeout_ms: u64) {
    use utoipa::openapi::Schema;
    if let Some(components) = doc.components.as_mut() {
        for request in ["ExecRequest", "RunRequest"] {
            let Some(RefOr::T(Schema::Object(object))) = components.schemas.get_mut(request) else { continue };
            if let Some(RefOr::T(Schema::Object(timeout))) = object.properties.get_mut("timeoutMs") {
                timeout.maximum = Some(max_exec_timeout_ms.into());
            }
        }
    }
    if let Some(item) = doc.paths.paths.get_mut("/v1/snapshots/{id}") {
        for op in [&mut item.get, &mut item.delete].into_iter().flatten() {
            for param in op.parameters.iter_mut().flatten().filter(|p| p.name == "id") {
                let id = ObjectBuilder::new().schema_type(Type::String).pattern(Some(SNAPSHOT_ID_PATTERN));
                param.schema = Some(RefOr::T(Schema::Object(id.build())));
            }
        }
    }
}

/// A snapshot id as the routes accept it (`snap-<uuid>`, `seed-<image id>`).
pub const SNAPSHOT_ID_PATTERN: &str = "^[A-Za-z0-9-]{1,80}$";
