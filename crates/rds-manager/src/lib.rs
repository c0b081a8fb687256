//! The rds manager: HTTP API (axum), services, auth, OpenAPI.
//!
//! Requests flow one way: `routes/` (thin handlers, OpenAPI annotations) → `services/` (the
//! behaviour) → [`rds_store::Store`] and [`rds_runtime::Runtime`]. The guest agent is reached
//! through [`agent::AgentClient`] over the runtime's hybrid-vsock socket.

pub mod agent;
pub mod auth;
pub mod bridge;
pub mod config;
pub mod error;
pub mod extract;
pub mod installation;
pub mod lifecycle;
pub mod liveness;
pub mod network;
pub mod openapi;
pub mod original_env;
pub mod rate_limit;
pub mod reconciler;
pub mod routes;
pub mod runtime_select;
pub mod server;
pub mod services;
pub mod state;
pub mod tls;
pub mod unread_body;
pub mod views;

#[cfg(feature = "testing")]
pub mod testing;

pub use config::Config;
pub use error::ApiError;
pub use state::AppState;
