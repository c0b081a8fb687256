//! The OpenAPI document, generated from the handlers' annotations.

use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::routes;

/// `GET /openapi.json`.
#[derive(OpenApi)]
#[openapi(
    info(title = "run-dat-sheesh manager API", description = "Run untrusted code in VMs (or, on the sandbox runtime, Linux namespaces)."),
    paths(
        routes::health::health,
        routes::vms::create, routes::vms::list, routes::vms::get, routes::vms::delete,
        routes::vms::start, routes::vms::stop, routes::vms::console_log, routes::vms::exec_logs,
        routes::exec::exec, routes::exec::run_ts, routes::exec::run_js, routes::exec::run_python,
        routes::files::upload, routes::files::download,
        routes::peers::list, routes::peers::sync, routes::peers::set_link, routes::peers::delete_link,
        routes::peers::set_secrets, routes::peers::calls,
        routes::network::patch,
        routes::images::list, routes::images::create, routes::images::get, routes::images::delete,
        routes::images::set_default, routes::images::put_kernel, routes::images::put_initrd,
        routes::images::put_rootfs, routes::images::put_bundle,
    ),
    modifiers(&ApiKeyAuth),
    security(("ApiKeyAuth" = [])),
    tags((name = "vms"), (name = "exec"), (name = "files"), (name = "health"), (name = "peers"), (name = "images"))
)]
pub struct ApiDoc;

/// Declares the `X-API-Key` security scheme.
struct ApiKeyAuth;

impl Modify for ApiKeyAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "ApiKeyAuth",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))),
        );
    }
}
