"""Typed views of the manager's JSON. Each model keeps the whole object in ``raw`` too, so a
field added by a newer manager is never lost."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Type, TypeVar

T = TypeVar("T", bound="Model")


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


@dataclass
class Model:
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls: Type[T], data: Dict[str, Any]) -> T:
        names = {f.name for f in dataclasses.fields(cls)}
        values = {_snake(k): v for k, v in data.items() if _snake(k) in names and k != "raw"}
        return cls(raw=data, **values)


@dataclass
class Vm(Model):
    id: str = ""
    state: str = ""
    cpu: int = 0
    mem_mb: int = 0
    disk_size_mb: int = 0
    runtime: str = ""
    isolation: str = ""
    outbound_internet: bool = False
    image_id: Optional[str] = None
    snapshot_id: Optional[str] = None
    provision_mode: Optional[str] = None
    state_reason: Optional[str] = None
    guest_ip: Optional[str] = None
    secret_env_keys: List[str] = field(default_factory=list)
    peer_links: List[Dict[str, Any]] = field(default_factory=list)
    network: Optional[Dict[str, Any]] = None
    created_at: int = 0
    updated_at: int = 0


@dataclass
class ExecResult(Model):
    exit_code: Optional[int] = None
    stdout: str = ""
    stderr: str = ""
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    timed_out: bool = False
    signal: Optional[int] = None
    duration_ms: int = 0
    oom_killed: bool = False

    @property
    def ok(self) -> bool:
        """True when the command exited with status 0."""
        return self.exit_code == 0


@dataclass
class RunResult(ExecResult):
    result: Any = None
    error: Optional[Dict[str, Any]] = None
    context_restarted: bool = False


@dataclass
class ExecEvent(Model):
    """One event of a streamed exec: ``type`` is ``stdout``, ``stderr`` or ``exit``."""

    type: str = ""
    data: str = ""
    exit_code: Optional[int] = None
    timed_out: bool = False
    signal: Optional[int] = None
    duration_ms: int = 0


@dataclass
class Snapshot(Model):
    id: str = ""
    kind: str = ""
    content: str = ""
    state: str = ""
    runtime: str = ""
    internal: bool = False
    cpu: int = 0
    mem_mb: int = 0
    disk_size_mb: int = 0
    size_bytes: int = 0
    has_memory: bool = False
    image_id: Optional[str] = None
    source_vm_id: Optional[str] = None
    created_at: int = 0


@dataclass
class Image(Model):
    id: str = ""
    name: str = ""
    description: str = ""
    is_default: bool = False
    has_kernel: bool = False
    has_rootfs: bool = False
    has_initrd: bool = False
    created_at: int = 0


@dataclass
class ContextInfo(Model):
    context_id: str = ""
    language: str = ""
    cwd: str = ""
    runs: int = 0
    restarts: int = 0
    busy: bool = False
    idle_timeout_ms: int = 0
    created_at: int = 0
    last_used_at: int = 0


@dataclass
class PtyToken(Model):
    token: str = ""
    expires_at: int = 0


@dataclass
class Health(Model):
    status: str = ""
    version: str = ""
    runtime: str = ""
    runtime_reason: str = ""
    isolation: str = ""
    installation_id: str = ""
