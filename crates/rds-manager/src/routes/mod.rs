//! The HTTP surface: one module per resource, composed here with auth, docs and JSON fallbacks.

pub mod exec;
pub mod files;
pub mod health;
pub mod network;
pub mod images;
pub mod peers;
pub mod vms;

use axum::routing::{get, patch, post, put};
use axum::{middleware, Router};
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

use crate::openapi::ApiDoc;
use crate::{auth, ApiError, AppState};

/// The complete application router.
pub fn router(state: AppState) -> Router {
    let drain_limit = crate::unread_body::MIN_DRAIN_BYTES.max(2 * state.config.max_json_body_bytes as u64);
    let protected = Router::new()
        .route("/v1/vms", post(vms::create).get(vms::list))
        .route("/v1/vms/{id}", get(vms::get).delete(vms::delete))
        .route("/v1/vms/{id}/start", post(vms::start))
        .route("/v1/vms/{id}/stop", post(vms::stop))
        .route("/v1/vms/{id}/logs", get(vms::console_log))
        .route("/v1/vms/{id}/exec-logs", get(vms::exec_logs))
        .route("/v1/vms/{id}/exec", post(exec::exec))
        .route("/v1/vms/{id}/run-ts", post(exec::run_ts))
        .route("/v1/vms/{id}/run-js", post(exec::run_js))
        .route("/v1/vms/{id}/run-python", post(exec::run_python))
        .route("/v1/vms/{id}/files/upload", post(files::upload))
        .route("/v1/vms/{id}/files/download", get(files::download))
        .route("/v1/vms/{id}/peers", get(peers::list))
        .route("/v1/vms/{id}/peers/sync", post(peers::sync))
        .route("/v1/vms/{id}/peers/{alias}", patch(peers::set_link).delete(peers::delete_link))
        .route("/v1/vms/{id}/secrets", patch(peers::set_secrets))
        .route("/v1/vms/{id}/network", patch(network::patch))
        .route("/v1/peer-calls", get(peers::calls))
        .route("/v1/images", get(images::list).post(images::create))
        .route("/v1/images/{id}", get(images::get).delete(images::delete))
        .route("/v1/images/{id}/set-default", post(images::set_default))
        .route("/v1/images/{id}/kernel", put(images::put_kernel))
        .route("/v1/images/{id}/initrd", put(images::put_initrd))
        .route("/v1/images/{id}/rootfs", put(images::put_rootfs))
        .route("/v1/images/{id}/bundle", put(images::put_bundle))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_api_key,
        ));
    Router::new()
        .merge(protected)
        .route("/v1/health", get(health::health))
        .merge(SwaggerUi::new("/swagger").url("/openapi.json", ApiDoc::openapi()))
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(state)
        // Outermost, so every early answer (auth, limits, bad input) is covered.
        .layer(middleware::from_fn(move |req, next| crate::unread_body::read_rest_of_body(drain_limit, req, next)))
}
