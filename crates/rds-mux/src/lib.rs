//! The agent channel of a VM without vsock: streams multiplexed over one byte stream (a
//! virtio-serial port, which QEMU migrates with the VM where its vhost-user vsock cannot be).
//!
//! * [`frame`] — the wire format;
//! * [`mux`] — one session of streams with per-stream flow control;
//! * [`guest`] — the agent's end on the port device;
//! * [`relay`] — the host's end, a process per VM that speaks hybrid vsock to the rest of rds,
//!   and the pause it offers for snapshots.

pub mod frame;
pub mod guest;
pub mod mux;
pub mod relay;

/// Name of the virtio-serial port that carries the agent channel.
pub const PORT_NAME: &str = "rds.agent";
