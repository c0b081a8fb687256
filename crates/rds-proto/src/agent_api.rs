//! The guest agent's HTTP API as both sides name it: its routes, query parameters, media types
//! and the small bodies that have no other home. The agent's router dispatches on [`AgentRoute`]
//! and the host's client (`rds-agent-client`) builds its requests from it, so the two cannot drift.

use http::Method;
use serde::{Deserialize, Serialize};

use crate::Language;

/// One route of the guest agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentRoute {
    /// `GET /health`: liveness, version and capabilities ([`AgentHealth`](crate::AgentHealth)).
    Health,
    /// `POST /exec`: a shell command ([`ExecRequest`](crate::ExecRequest)), buffered or NDJSON.
    Exec,
    /// `POST /run-ts|run-js|run-python`: a snippet or file ([`RunRequest`](crate::RunRequest)).
    Run(Language),
    /// `POST /files/upload?dest=`: a tar.gz body unpacked into the workspace.
    Upload,
    /// `GET /files/download?path=`: a workspace path as a tar.gz stream.
    Download,
    /// `POST /internal/replace-tree?dest=&owner=&readOnly=`: swaps a whole tree for a tar.gz (host only).
    ReplaceTree,
    /// `POST /shutdown`: syncs the guest's disks and powers it off.
    Shutdown,
    /// `POST /internal/sync`: flushes every file system to its disk (before a disk snapshot).
    Sync,
    /// `POST /internal/identity`: who a guest resumed from a memory snapshot now is ([`Identity`]).
    Identity,
    /// `GET /contexts`: the code contexts ([`ContextInfo`](crate::ContextInfo)).
    Contexts,
    /// `POST /contexts/create`: starts a code context ([`ContextRequest`](crate::ContextRequest)).
    ContextCreate,
    /// `POST /contexts/restart?id=`: restarts a context's interpreter, dropping its state.
    ContextRestart,
    /// `POST /contexts/delete?id=`: stops a context.
    ContextDelete,
    /// `GET /pty`: the terminal sessions ([`PtyInfo`](crate::pty::PtyInfo)).
    Ptys,
    /// `POST /pty/open`: starts a terminal session ([`PtyRequest`](crate::pty::PtyRequest)).
    PtyOpen,
    /// `GET /pty/attach?id=` with `Upgrade: rds-pty`: the session's terminal as frames
    /// ([`crate::pty`]).
    PtyAttach,
    /// `POST /pty/kill?id=`: ends a session and everything it started.
    PtyKill,
    /// `POST /exec/attach` with `Upgrade: rds-exec`: a shell command
    /// ([`ExecRequest`](crate::ExecRequest)) whose stdin, stdout and stderr then flow as frames
    /// ([`crate::pty`]).
    ExecAttach,
}

impl AgentRoute {
    /// Every route, for dispatch and for telling 404 from 405.
    pub const ALL: [AgentRoute; 20] = [
        AgentRoute::Health,
        AgentRoute::Exec,
        AgentRoute::Run(Language::Ts),
        AgentRoute::Run(Language::Js),
        AgentRoute::Run(Language::Python),
        AgentRoute::Upload,
        AgentRoute::Download,
        AgentRoute::ReplaceTree,
        AgentRoute::Shutdown,
        AgentRoute::Sync,
        AgentRoute::Identity,
        AgentRoute::Contexts,
        AgentRoute::ContextCreate,
        AgentRoute::ContextRestart,
        AgentRoute::ContextDelete,
        AgentRoute::Ptys,
        AgentRoute::PtyOpen,
        AgentRoute::PtyAttach,
        AgentRoute::PtyKill,
        AgentRoute::ExecAttach,
    ];

    /// The route's path, without query.
    pub fn path(self) -> &'static str {
        match self {
            AgentRoute::Health => "/health",
            AgentRoute::Exec => "/exec",
            AgentRoute::Run(Language::Ts) => "/run-ts",
            AgentRoute::Run(Language::Js) => "/run-js",
            AgentRoute::Run(Language::Python) => "/run-python",
            AgentRoute::Upload => "/files/upload",
            AgentRoute::Download => "/files/download",
            AgentRoute::ReplaceTree => "/internal/replace-tree",
            AgentRoute::Shutdown => "/shutdown",
            AgentRoute::Sync => "/internal/sync",
            AgentRoute::Identity => "/internal/identity",
            AgentRoute::Contexts => "/contexts",
            AgentRoute::ContextCreate => "/contexts/create",
            AgentRoute::ContextRestart => "/contexts/restart",
            AgentRoute::ContextDelete => "/contexts/delete",
            AgentRoute::Ptys => "/pty",
            AgentRoute::PtyOpen => "/pty/open",
            AgentRoute::PtyAttach => "/pty/attach",
            AgentRoute::PtyKill => "/pty/kill",
            AgentRoute::ExecAttach => "/exec/attach",
        }
    }

    /// The one method the route answers.
    pub fn method(self) -> Method {
        match self {
            AgentRoute::Health
            | AgentRoute::Download
            | AgentRoute::Contexts
            | AgentRoute::Ptys
            | AgentRoute::PtyAttach => Method::GET,
            _ => Method::POST,
        }
    }

    /// The route whose path is `path`, if any.
    pub fn from_path(path: &str) -> Option<AgentRoute> {
        AgentRoute::ALL.into_iter().find(|r| r.path() == path)
    }
}

/// Query parameters of the file routes.
pub mod query {
    /// Upload and replace-tree: the destination directory, relative to the workspace or under it.
    pub const DEST: &str = "dest";
    /// Download: the workspace path to send.
    pub const PATH: &str = "path";
    /// Replace-tree: who owns what it writes, a [`TreeOwner`](super::TreeOwner).
    pub const OWNER: &str = "owner";
    /// Replace-tree: `true` to make the tree read-only.
    pub const READ_ONLY: &str = "readOnly";
    /// Context restart and delete, PTY attach and kill: the context's or session's id.
    pub const ID: &str = "id";
}

/// Media type of a streamed exec (asked for with `Accept`).
pub const NDJSON: &str = "application/x-ndjson";
/// Media type of file transfers.
pub const GZIP: &str = "application/gzip";

/// Who owns the files a replace-tree writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TreeOwner {
    /// Root: user code can read but not change them.
    Root,
    /// The uid user code runs as.
    User,
}

impl TreeOwner {
    /// The query value.
    pub fn as_str(self) -> &'static str {
        match self {
            TreeOwner::Root => "root",
            TreeOwner::User => "user",
        }
    }

    /// Parses a query value.
    pub fn parse(value: &str) -> Option<TreeOwner> {
        [TreeOwner::Root, TreeOwner::User].into_iter().find(|o| o.as_str() == value)
    }
}

/// Response of an upload or replace-tree: what was written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferSummary {
    /// Entries (files, directories, links) written.
    pub entries: u64,
    /// Bytes of file content written.
    pub bytes: u64,
}

/// Body of `POST /internal/identity`: what a guest resumed from a memory snapshot must change so
/// that it is not a twin of every other VM started from that snapshot. Sent by the host only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Identity {
    /// The VM's hostname.
    pub hostname: String,
    /// Its network link, when it has one: the agent readdresses the interface and rewrites
    /// `/etc/resolv.conf`.
    #[serde(default)]
    pub net: Option<crate::guest_net::GuestNet>,
    /// The interface's MAC address, set with the link.
    #[serde(default)]
    pub mac: Option<[u8; 6]>,
    /// Fresh host entropy ([`Identity::ENTROPY_BYTES`]): mixed into the guest's pool and credited,
    /// then the kernel's CRNG reseeds, so clones stop sharing the snapshot's random state.
    pub entropy: Vec<u8>,
    /// The host's clock (milliseconds since the Unix epoch): the guest's stood still while the
    /// snapshot was on disk.
    pub unix_time_ms: u64,
}

impl Identity {
    /// How much entropy the host sends.
    pub const ENTROPY_BYTES: usize = 64;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_found_by_its_own_path_and_paths_are_distinct() {
        for route in AgentRoute::ALL {
            assert_eq!(AgentRoute::from_path(route.path()), Some(route));
        }
        let mut paths: Vec<&str> = AgentRoute::ALL.iter().map(|r| r.path()).collect();
        paths.sort();
        paths.dedup();
        assert_eq!(paths.len(), AgentRoute::ALL.len());
        assert_eq!(AgentRoute::from_path("/files"), None);
    }

    #[test]
    fn run_routes_match_the_language_route_names() {
        for language in [Language::Ts, Language::Js, Language::Python] {
            assert_eq!(AgentRoute::Run(language).path(), format!("/{}", language.route()));
        }
    }

    #[test]
    fn tree_owner_round_trips_and_rejects_others() {
        for owner in [TreeOwner::Root, TreeOwner::User] {
            assert_eq!(TreeOwner::parse(owner.as_str()), Some(owner));
        }
        assert_eq!(TreeOwner::parse("nobody"), None);
    }
}
