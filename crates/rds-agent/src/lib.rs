//! The rds guest agent: the program inside every sandbox that executes untrusted code.
//!
//! It serves HTTP/1.1 over hybrid vsock ([`server`]), runs commands and snippets as uid 1000
//! ([`exec`], [`run`]), moves files in and out of `/workspace` ([`files`]), and acts as PID 1
//! in a guest ([`init`]) or inside the namespaces of the sandbox runtime ([`sandbox`], confined by
//! [`seccomp`]). On the host, [`relay`] is the host's end of a QEMU VM's agent channel.

pub mod bench;
pub mod exec;
pub mod files;
pub mod identity;
pub mod init;
pub mod initramfs;
pub mod loop_device;
pub mod netconf;
pub mod pty;
pub mod relay;
pub mod run;
pub mod sandbox;
pub mod seccomp;
pub mod server;
