//! The HTTP surface: one module per resource, composed here with auth, docs and JSON fallbacks.
//!
//! Each route is declared once, by its handler's `#[utoipa::path]`: `routes!` serves the handler
//! at that method and path and adds the operation to the OpenAPI document, so the two cannot
//! disagree. Handlers of one path are registered together (a `routes!` call serves one path).

pub mod api_keys;
pub mod contexts;
pub mod exec;
pub mod files;
pub mod health;
pub mod images;
pub mod network;
pub mod peers;
pub mod pool;
pub mod ptys;
pub mod snapshots;
pub mod vms;

use axum::{middleware, Router};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use utoipa_swagger_ui::SwaggerUi;

use crate::openapi::{ApiDoc, ProtectedResponses};
use crate::{auth, ApiError, AppState};

/// The routes behind `X-API-Key`.
fn protected_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::default()
        .routes(routes!(api_keys::create, api_keys::list))
        .routes(routes!(api_keys::revoke))
        .routes(routes!(vms::create, vms::list))
        .routes(routes!(vms::get, vms::delete))
        .routes(routes!(vms::start))
        .routes(routes!(vms::stop))
        .routes(routes!(vms::logs))
        .routes(routes!(vms::exec_logs))
        .routes(routes!(snapshots::create))
        .routes(routes!(snapshots::list))
        .routes(routes!(snapshots::get, snapshots::delete))
        .routes(routes!(pool::get))
        .routes(routes!(exec::exec))
        .routes(routes!(exec::run_ts))
        .routes(routes!(exec::run_js))
        .routes(routes!(exec::run_python))
        .routes(routes!(contexts::create, contexts::list))
        .routes(routes!(contexts::get, contexts::delete))
        .routes(routes!(contexts::restart))
        .routes(routes!(ptys::token))
        .routes(routes!(ptys::list))
        .routes(routes!(ptys::kill))
        .routes(routes!(files::upload))
        .routes(routes!(files::download))
        .routes(routes!(peers::list))
        .routes(routes!(peers::sync))
        .routes(routes!(peers::set_link, peers::delete_link))
        .routes(routes!(peers::set_secrets))
        .routes(routes!(network::patch))
        .routes(routes!(peers::calls))
        .routes(routes!(images::list, images::create))
        .routes(routes!(images::get, images::delete))
        .routes(routes!(images::set_default))
        .routes(routes!(images::put_kernel))
        .routes(routes!(images::put_initrd))
        .routes(routes!(images::put_rootfs))
        .routes(routes!(images::put_bundle))
}

/// The routes anyone may call.
fn public_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::default().routes(routes!(health::health))
}

/// The WebSockets (terminal, exec with streamed stdin): outside the `X-API-Key` layer because it also takes a single-use
/// token, so it checks the key (and its rate) itself; documented like the protected routes.
fn self_authenticated_routes() -> OpenApiRouter<AppState> {
    let mut routes = OpenApiRouter::default().routes(routes!(ptys::attach)).routes(routes!(exec::exec_socket));
    ProtectedResponses.modify(routes.get_openapi_mut());
    routes
}

/// The complete application router.
pub fn router(state: AppState) -> Router {
    // Twice the largest body limit: a body a little over its limit still gets a readable answer.
    let largest = (state.config.max_json_body_bytes.max(state.config.max_exec_body_bytes) as u64)
        .max(state.config.max_upload_bytes);
    let drain_limit = crate::unread_body::MIN_DRAIN_BYTES.max(largest.saturating_mul(2));
    let expose_internal = state.config.expose_internal_errors;
    let mut protected = protected_routes();
    // Only these operations get the auth layer, so only they document its 401 and 429.
    ProtectedResponses.modify(protected.get_openapi_mut());
    let protected = protected.route_layer(middleware::from_fn_with_state(state.clone(), auth::require_api_key));
    let (api, mut doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(protected)
        .merge(self_authenticated_routes())
        .merge(public_routes())
        .split_for_parts();
    crate::openapi::apply_configuration(&mut doc, state.config.max_exec_timeout_ms);
    Router::new()
        .merge(api)
        .merge(SwaggerUi::new("/swagger").url("/openapi.json", doc))
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(state)
        .layer(middleware::from_fn(move |req, next| crate::error::report_errors(expose_internal, req, next)))
        // Outermost, so every early answer (auth, limits, bad input) is covered.
        .layer(middleware::from_fn(move |req, next| crate::unread_body::read_rest_of_body(drain_limit, req, next)))
}
