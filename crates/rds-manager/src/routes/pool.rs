//! `/v1/pool`: the warm pool's state.

use axum::extract::State;
use axum::Json;

use crate::services::pool;
use crate::views::PoolView;
use crate::{ApiError, AppState};

/// The warm pool: its target and sizes, members ready and starting, hits, misses and refill
/// errors since the manager started.
#[utoipa::path(get, path = "/v1/pool", tag = "vms", responses((status = 200, body = PoolView)))]
pub async fn get(State(s): State<AppState>) -> Result<Json<PoolView>, ApiError> {
    Ok(Json(pool::view(&s).await?))
}
