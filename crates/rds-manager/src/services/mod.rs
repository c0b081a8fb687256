//! The manager's behaviour, one module per resource. Handlers in `routes/` only call these.

pub mod api_keys;
pub mod contexts;
pub mod events;
pub mod exec;
pub mod exec_socket;
pub mod files;
pub mod image_formats;
pub mod images;
pub mod logs;
pub mod network;
pub mod peers;
pub mod pool;
pub mod ptys;
pub mod seeds;
pub mod snapshots;
pub mod vms;
