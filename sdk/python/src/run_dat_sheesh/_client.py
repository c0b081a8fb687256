"""The HTTP clients. :class:`Client` is synchronous, :class:`AsyncClient` asynchronous; both have
the same methods (the async ones return awaitables), defined once in :class:`_Operations`.

Every exec and run carries an ``execId`` (generated unless given), so a call whose connection
failed is retried safely: the manager joins the first attempt instead of running it twice.
"""

from __future__ import annotations

import json
import os
import posixpath
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Union

import httpx

from . import _files
from ._errors import ConnectionError, error_for
from ._models import (
    ContextInfo,
    ExecEvent,
    ExecResult,
    Health,
    Image,
    PtyToken,
    RunResult,
    Snapshot,
    Vm,
)

DEFAULT_URL = "http://127.0.0.1:3000"
NDJSON = "application/x-ndjson"
Json = Any


@dataclass
class _Call:
    method: str
    path: str
    params: Optional[Dict[str, Any]] = None
    json: Json = None
    content: Optional[bytes] = None
    headers: Dict[str, str] = field(default_factory=dict)
    parse: Optional[Callable[[Any], Any]] = None
    raw: bool = False
    retry: bool = False


def _compact(values: Mapping[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _secret_env(secret_env: Union[None, Mapping[str, str], Sequence[str]]) -> Optional[List[str]]:
    if secret_env is None:
        return None
    if isinstance(secret_env, Mapping):
        return [f"{k}={v}" for k, v in secret_env.items()]
    return list(secret_env)


def _peer_links(links: Optional[Iterable[Any]]) -> Optional[List[Dict[str, Any]]]:
    if links is None:
        return None
    out = []
    for link in links:
        if isinstance(link, Mapping):
            out.append(_compact({"alias": link["alias"], "vmId": link.get("vmId", link.get("vm_id")),
                                 "sourceMode": link.get("sourceMode", link.get("source_mode"))}))
        else:
            alias, vm_id = link
            out.append({"alias": alias, "vmId": vm_id})
    return out


def _list_of(model):
    return lambda items: [model.from_json(item) for item in items]


class _Operations:
    """Every operation of the API, as one method each."""

    def _call(self, call: _Call) -> Any:  # pragma: no cover - provided by the clients
        raise NotImplementedError

    # Health
    def health(self) -> Health:
        """``GET /v1/health``."""
        return self._call(_Call("GET", "/v1/health", parse=Health.from_json, retry=True))

    # VMs
    def create_vm(
        self,
        cpu: int = 1,
        mem_mb: int = 256,
        *,
        disk_size_mb: Optional[int] = None,
        image_id: Optional[str] = None,
        outbound_internet: Optional[bool] = None,
        allow_ips: Optional[Sequence[str]] = None,
        allow_domains: Optional[Sequence[str]] = None,
        secret_env: Union[None, Mapping[str, str], Sequence[str]] = None,
        peer_links: Optional[Iterable[Any]] = None,
        snapshot_id: Optional[str] = None,
    ) -> Vm:
        """``POST /v1/vms``: a RUNNING VM. ``secret_env`` as ``{"KEY": "value"}``; ``peer_links``
        as ``[("alias", provider_vm_id)]``; ``snapshot_id`` starts it from a snapshot."""
        body = _compact({
            "cpu": cpu, "memMb": mem_mb, "diskSizeMb": disk_size_mb, "imageId": image_id,
            "outboundInternet": outbound_internet,
            "allowIps": list(allow_ips) if allow_ips is not None else None,
            "allowDomains": list(allow_domains) if allow_domains is not None else None,
            "secretEnv": _secret_env(secret_env), "peerLinks": _peer_links(peer_links),
            "userOverlaySnapshotId": snapshot_id,
        })
        return self._call(_Call("POST", "/v1/vms", json=body, parse=Vm.from_json))

    def list_vms(self) -> List[Vm]:
        """``GET /v1/vms``."""
        return self._call(_Call("GET", "/v1/vms", parse=_list_of(Vm), retry=True))

    def get_vm(self, vm_id: str) -> Vm:
        """``GET /v1/vms/{id}``."""
        return self._call(_Call("GET", f"/v1/vms/{vm_id}", parse=Vm.from_json, retry=True))

    def start_vm(self, vm_id: str) -> None:
        """``POST /v1/vms/{id}/start``: boots a STOPPED VM (its workspace kept)."""
        return self._call(_Call("POST", f"/v1/vms/{vm_id}/start"))

    def stop_vm(self, vm_id: str) -> None:
        """``POST /v1/vms/{id}/stop``: shuts the VM down, keeping its workspace."""
        return self._call(_Call("POST", f"/v1/vms/{vm_id}/stop"))

    def delete_vm(self, vm_id: str) -> None:
        """``DELETE /v1/vms/{id}``: the VM and everything it holds."""
        return self._call(_Call("DELETE", f"/v1/vms/{vm_id}"))

    def logs(self, vm_id: str, *, type: Optional[str] = None, tail: Optional[int] = None) -> Dict[str, Any]:  # noqa: A002
        """``GET /v1/vms/{id}/logs``: the console log (or ``type``), its last ``tail`` lines."""
        params = _compact({"type": type, "tail": tail})
        return self._call(_Call("GET", f"/v1/vms/{vm_id}/logs", params=params, retry=True))

    def exec_logs(self, vm_id: str, *, limit: Optional[int] = None) -> Dict[str, Any]:
        """``GET /v1/vms/{id}/exec-logs``."""
        return self._call(_Call("GET", f"/v1/vms/{vm_id}/exec-logs", params=_compact({"limit": limit}), retry=True))

    # Exec and code
    @staticmethod
    def _exec_body(cmd, cwd, env, stdin, timeout_ms, exec_id) -> Dict[str, Any]:
        if isinstance(stdin, bytes):
            stdin = stdin.decode()
        return _compact({"cmd": cmd, "cwd": cwd, "env": dict(env) if env else None, "stdin": stdin,
                         "timeoutMs": timeout_ms, "execId": exec_id or str(uuid.uuid4())})

    def exec(
        self,
        vm_id: str,
        cmd: str,
        *,
        cwd: Optional[str] = None,
        env: Optional[Mapping[str, str]] = None,
        stdin: Union[None, str, bytes] = None,
        timeout_ms: Optional[int] = None,
        exec_id: Optional[str] = None,
    ) -> ExecResult:
        """``POST /v1/vms/{id}/exec``: runs ``cmd`` with bash as uid 1000 in ``/workspace``."""
        body = self._exec_body(cmd, cwd, env, stdin, timeout_ms, exec_id)
        return self._call(_Call("POST", f"/v1/vms/{vm_id}/exec", json=body, parse=ExecResult.from_json, retry=True))

    def _run(self, route: str, vm_id: str, code, path, args, env, timeout_ms, context_id, allow_net, exec_id):
        body = _compact({"code": code, "path": path, "args": list(args) if args is not None else None,
                         "env": dict(env) if env else None, "timeoutMs": timeout_ms, "contextId": context_id,
                         "allowNet": allow_net, "execId": exec_id or str(uuid.uuid4())})
        return self._call(_Call("POST", f"/v1/vms/{vm_id}/{route}", json=body, parse=RunResult.from_json, retry=True))

    def run_ts(self, vm_id: str, code: Optional[str] = None, *, path: Optional[str] = None,
               args: Optional[Sequence[str]] = None, env: Optional[Mapping[str, str]] = None,
               timeout_ms: Optional[int] = None, context_id: Optional[str] = None,
               allow_net: Optional[bool] = None, exec_id: Optional[str] = None) -> RunResult:
        """``POST /v1/vms/{id}/run-ts``: TypeScript (Deno); ``result.set(value)`` or, in a context,
        the last expression is ``RunResult.result``."""
        return self._run("run-ts", vm_id, code, path, args, env, timeout_ms, context_id, allow_net, exec_id)

    def run_js(self, vm_id: str, code: Optional[str] = None, *, path: Optional[str] = None,
               args: Optional[Sequence[str]] = None, env: Optional[Mapping[str, str]] = None,
               timeout_ms: Optional[int] = None, context_id: Optional[str] = None,
               allow_net: Optional[bool] = None, exec_id: Optional[str] = None) -> RunResult:
        """``POST /v1/vms/{id}/run-js``: JavaScript (Node.js)."""
        return self._run("run-js", vm_id, code, path, args, env, timeout_ms, context_id, allow_net, exec_id)

    def run_python(self, vm_id: str, code: Optional[str] = None, *, path: Optional[str] = None,
                   args: Optional[Sequence[str]] = None, env: Optional[Mapping[str, str]] = None,
                   timeout_ms: Optional[int] = None, context_id: Optional[str] = None,
                   allow_net: Optional[bool] = None, exec_id: Optional[str] = None) -> RunResult:
        """``POST /v1/vms/{id}/run-python``: Python 3; assign ``result`` to return a value."""
        return self._run("run-python", vm_id, code, path, args, env, timeout_ms, context_id, allow_net, exec_id)

    # Code contexts
    def create_context(self, vm_id: str, language: str, *, cwd: Optional[str] = None,
                       env: Optional[Mapping[str, str]] = None, idle_timeout_ms: Optional[int] = None,
                       allow_net: Optional[bool] = None) -> ContextInfo:
        """``POST /v1/vms/{id}/contexts``: an interpreter whose state lasts between runs
        (``language``: ``python``, ``typescript`` or ``javascript``)."""
        body = _compact({"language": language, "cwd": cwd, "env": dict(env) if env else None,
                         "idleTimeoutMs": idle_timeout_ms, "allowNet": allow_net})
        return self._call(_Call("POST", f"/v1/vms/{vm_id}/contexts", json=body, parse=ContextInfo.from_json))

    def list_contexts(self, vm_id: str) -> List[ContextInfo]:
        """``GET /v1/vms/{id}/contexts``."""
        return self._call(_Call("GET", f"/v1/vms/{vm_id}/contexts", parse=_list_of(ContextInfo), retry=True))

    def get_context(self, vm_id: str, context_id: str) -> ContextInfo:
        """``GET /v1/vms/{id}/contexts/{contextId}``."""
        return self._call(_Call("GET", f"/v1/vms/{vm_id}/contexts/{context_id}", parse=ContextInfo.from_json,
                                retry=True))

    def restart_context(self, vm_id: str, context_id: str) -> ContextInfo:
        """``POST /v1/vms/{id}/contexts/{contextId}/restart``: drops its state."""
        return self._call(_Call("POST", f"/v1/vms/{vm_id}/contexts/{context_id}/restart",
                                parse=ContextInfo.from_json))

    def delete_context(self, vm_id: str, context_id: str) -> None:
        """``DELETE /v1/vms/{id}/contexts/{contextId}``."""
        return self._call(_Call("DELETE", f"/v1/vms/{vm_id}/contexts/{context_id}"))

    # Files
    def upload(self, vm_id: str, archive: bytes, dest: str = "/workspace") -> None:
        """``POST /v1/vms/{id}/files/upload``: unpacks a tar.gz under ``dest`` (in the workspace)."""
        return self._call(_Call("POST", f"/v1/vms/{vm_id}/files/upload", params={"dest": dest}, content=archive,
                                headers={"content-type": "application/gzip"}))

    def upload_dir(self, vm_id: str, local_dir: "_files.PathLike", dest: str = "/workspace") -> None:
        """Uploads the contents of the local directory ``local_dir`` into ``dest``."""
        return self.upload(vm_id, _files.pack_dir(local_dir), dest)

    def write_file(self, vm_id: str, path: str, data: Union[str, bytes], mode: int = 0o644) -> None:
        """Writes one file at ``path`` (in the workspace)."""
        data = data.encode() if isinstance(data, str) else data
        dest, name = posixpath.split(path)
        return self.upload(vm_id, _files.pack_file(name, data, mode), dest or "/workspace")

    def download(self, vm_id: str, path: str) -> bytes:
        """``GET /v1/vms/{id}/files/download``: ``path`` as a tar.gz."""
        return self._call(_Call("GET", f"/v1/vms/{vm_id}/files/download", params={"path": path}, raw=True,
                                retry=True))

    def download_dir(self, vm_id: str, path: str, local_dir: "_files.PathLike"):
        """Downloads ``path`` and unpacks it into the local directory ``local_dir``."""
        return self._call(_Call("GET", f"/v1/vms/{vm_id}/files/download", params={"path": path}, raw=True,
                                retry=True, parse=lambda archive: _files.unpack_into(archive, local_dir)))

    def read_file(self, vm_id: str, path: str) -> bytes:
        """The bytes of the file at ``path``."""
        return self._call(_Call("GET", f"/v1/vms/{vm_id}/files/download", params={"path": path}, raw=True,
                                retry=True, parse=_files.single_file))

    # Snapshots
    def create_snapshot(self, vm_id: str, *, include_memory: Optional[bool] = None) -> Snapshot:
        """``POST /v1/vms/{id}/snapshots``."""
        body = _compact({"includeMemory": include_memory})
        return self._call(_Call("POST", f"/v1/vms/{vm_id}/snapshots", json=body, parse=Snapshot.from_json))

    def list_snapshots(self, scope: Optional[str] = None) -> List[Snapshot]:
        """``GET /v1/snapshots`` (``scope``: ``user``, ``internal`` or ``all``)."""
        return self._call(_Call("GET", "/v1/snapshots", params=_compact({"scope": scope}),
                                parse=_list_of(Snapshot), retry=True))

    def get_snapshot(self, snapshot_id: str) -> Snapshot:
        """``GET /v1/snapshots/{id}``."""
        return self._call(_Call("GET", f"/v1/snapshots/{snapshot_id}", parse=Snapshot.from_json, retry=True))

    def delete_snapshot(self, snapshot_id: str) -> None:
        """``DELETE /v1/snapshots/{id}``."""
        return self._call(_Call("DELETE", f"/v1/snapshots/{snapshot_id}"))

    # Images
    def list_images(self) -> List[Image]:
        """``GET /v1/images``."""
        return self._call(_Call("GET", "/v1/images", parse=_list_of(Image), retry=True))

    def get_image(self, image_id: str) -> Image:
        """``GET /v1/images/{id}``."""
        return self._call(_Call("GET", f"/v1/images/{image_id}", parse=Image.from_json, retry=True))

    def create_image(self, name: str, description: Optional[str] = None) -> Image:
        """``POST /v1/images``: an empty image to upload parts to."""
        body = _compact({"name": name, "description": description})
        return self._call(_Call("POST", "/v1/images", json=body, parse=Image.from_json))

    def delete_image(self, image_id: str) -> None:
        """``DELETE /v1/images/{id}``."""
        return self._call(_Call("DELETE", f"/v1/images/{image_id}"))

    def set_default_image(self, image_id: str) -> None:
        """``POST /v1/images/{id}/set-default``."""
        return self._call(_Call("POST", f"/v1/images/{image_id}/set-default"))

    def _put_part(self, image_id: str, part: str, data: bytes, content_type: str) -> Image:
        return self._call(_Call("PUT", f"/v1/images/{image_id}/{part}", content=data,
                                headers={"content-type": content_type}, parse=Image.from_json))

    def upload_kernel(self, image_id: str, data: bytes) -> Image:
        """``PUT /v1/images/{id}/kernel``."""
        return self._put_part(image_id, "kernel", data, "application/octet-stream")

    def upload_rootfs(self, image_id: str, data: bytes) -> Image:
        """``PUT /v1/images/{id}/rootfs``."""
        return self._put_part(image_id, "rootfs", data, "application/octet-stream")

    def upload_initrd(self, image_id: str, data: bytes) -> Image:
        """``PUT /v1/images/{id}/initrd``."""
        return self._put_part(image_id, "initrd", data, "application/octet-stream")

    def upload_bundle(self, image_id: str, data: bytes) -> Image:
        """``PUT /v1/images/{id}/bundle``: a tar.gz of ``rds image build``'s output."""
        return self._put_part(image_id, "bundle", data, "application/gzip")

    # Network, peers, secrets
    def update_network(self, vm_id: str, *, outbound_internet: Optional[bool] = None,
                       allow_ips: Optional[Sequence[str]] = None,
                       allow_domains: Optional[Sequence[str]] = None) -> Vm:
        """``PATCH /v1/vms/{id}/network``: changes the VM's egress policy while it runs."""
        body = _compact({"outboundInternet": outbound_internet,
                         "allowIps": list(allow_ips) if allow_ips is not None else None,
                         "allowDomains": list(allow_domains) if allow_domains is not None else None})
        return self._call(_Call("PATCH", f"/v1/vms/{vm_id}/network", json=body, parse=Vm.from_json))

    def list_peers(self, vm_id: str) -> List[Dict[str, Any]]:
        """``GET /v1/vms/{id}/peers``: the providers this VM may call."""
        return self._call(_Call("GET", f"/v1/vms/{vm_id}/peers", retry=True))

    def set_peer_link(self, vm_id: str, alias: str, *, provider_vm_id: Optional[str] = None,
                      source_mode: Optional[str] = None) -> Dict[str, Any]:
        """``PATCH /v1/vms/{id}/peers/{alias}``: adds or changes a link to a provider."""
        body = _compact({"vmId": provider_vm_id, "sourceMode": source_mode})
        return self._call(_Call("PATCH", f"/v1/vms/{vm_id}/peers/{alias}", json=body))

    def delete_peer_link(self, vm_id: str, alias: str) -> None:
        """``DELETE /v1/vms/{id}/peers/{alias}``."""
        return self._call(_Call("DELETE", f"/v1/vms/{vm_id}/peers/{alias}"))

    def sync_peers(self, vm_id: str) -> Dict[str, Any]:
        """``POST /v1/vms/{id}/peers/sync``: refreshes the generated clients in the consumer."""
        return self._call(_Call("POST", f"/v1/vms/{vm_id}/peers/sync"))

    def peer_calls(self, *, vm_id: Optional[str] = None, limit: Optional[int] = None) -> List[Dict[str, Any]]:
        """``GET /v1/peer-calls``: recent bridge calls."""
        return self._call(_Call("GET", "/v1/peer-calls", params=_compact({"vmId": vm_id, "limit": limit}),
                                retry=True))

    def set_secrets(self, vm_id: str, secret_env: Union[Mapping[str, str], Sequence[str]]) -> None:
        """``PATCH /v1/vms/{id}/secrets``: replaces a provider's secrets."""
        return self._call(_Call("PATCH", f"/v1/vms/{vm_id}/secrets", json={"secretEnv": _secret_env(secret_env)}))

    # API keys
    def create_api_key(self, name: str, *, expires_in_days: Optional[int] = None) -> Dict[str, Any]:
        """``POST /v1/api-keys``: a new key; ``["key"]`` holds it, shown this once."""
        return self._call(_Call("POST", "/v1/api-keys", json=_compact({"name": name, "expiresInDays": expires_in_days})))

    def list_api_keys(self) -> List[Dict[str, Any]]:
        """``GET /v1/api-keys``: the stored keys (never the keys themselves)."""
        return self._call(_Call("GET", "/v1/api-keys", retry=True))

    def revoke_api_key(self, key_id: str) -> None:
        """``DELETE /v1/api-keys/{id}``: refused from the next request on."""
        return self._call(_Call("DELETE", f"/v1/api-keys/{key_id}"))

    # Warm pool
    def pool(self) -> Dict[str, Any]:
        """``GET /v1/pool``."""
        return self._call(_Call("GET", "/v1/pool", retry=True))

    # Terminals
    def create_pty_token(self, vm_id: str) -> PtyToken:
        """``POST /v1/vms/{id}/pty-tokens``: a single-use token for a WebSocket (browsers)."""
        return self._call(_Call("POST", f"/v1/vms/{vm_id}/pty-tokens", parse=PtyToken.from_json))

    def list_pty_sessions(self, vm_id: str) -> List[Dict[str, Any]]:
        """``GET /v1/vms/{id}/pty-sessions``."""
        return self._call(_Call("GET", f"/v1/vms/{vm_id}/pty-sessions", retry=True))

    def kill_pty_session(self, vm_id: str, session_id: str) -> None:
        """``DELETE /v1/vms/{id}/pty-sessions/{sessionId}``."""
        return self._call(_Call("DELETE", f"/v1/vms/{vm_id}/pty-sessions/{session_id}"))


def _decode(resp: httpx.Response, call: _Call) -> Any:
    if resp.status_code >= 400:
        try:
            body = resp.json()
        except ValueError:
            body = resp.text
        raise error_for(resp.status_code, body, dict(resp.headers))
    if call.raw:
        value: Any = resp.content
    elif resp.status_code == 204 or not resp.content:
        return None
    else:
        value = resp.json()
    return call.parse(value) if call.parse else value


def _settings(url: Optional[str], api_key: Optional[str]):
    url = url or os.environ.get("RDS_URL") or DEFAULT_URL
    api_key = api_key or os.environ.get("RDS_API_KEY")
    if not api_key:
        raise ValueError("an API key is needed: pass api_key= or set RDS_API_KEY")
    return url.rstrip("/"), api_key


def _event(line: str) -> ExecEvent:
    return ExecEvent.from_json(json.loads(line))


class Client(_Operations):
    """A synchronous client. ``url`` and ``api_key`` default to ``$RDS_URL`` and
    ``$RDS_API_KEY``. Use it as a context manager, or call :meth:`close`."""

    def __init__(self, url: Optional[str] = None, api_key: Optional[str] = None, *, timeout: float = 120.0,
                 retries: int = 2, transport: Optional[httpx.BaseTransport] = None):
        self.url, self._key = _settings(url, api_key)
        self.retries = retries
        self._http = httpx.Client(base_url=self.url, headers={"X-API-Key": self._key}, timeout=timeout,
                                  transport=transport)

    def _call(self, call: _Call) -> Any:
        attempts = 1 + (self.retries if call.retry else 0)
        for attempt in range(attempts):
            try:
                resp = self._http.request(call.method, call.path, params=call.params, json=call.json,
                                          content=call.content, headers=call.headers)
            except httpx.TransportError as e:
                if attempt + 1 == attempts:
                    raise ConnectionError(f"{call.method} {call.path}: {e}") from e
                time.sleep(0.2 * 2 ** attempt)
                continue
            return _decode(resp, call)

    def exec_stream(self, vm_id: str, cmd: str, *, cwd: Optional[str] = None,
                    env: Optional[Mapping[str, str]] = None, stdin: Union[None, str, bytes] = None,
                    timeout_ms: Optional[int] = None, exec_id: Optional[str] = None) -> Iterator[ExecEvent]:
        """``POST /v1/vms/{id}/exec`` streamed: yields ``stdout``/``stderr`` events as the command
        prints, then its ``exit`` event."""
        body = self._exec_body(cmd, cwd, env, stdin, timeout_ms, exec_id)
        with self._http.stream("POST", f"/v1/vms/{vm_id}/exec", json=body, headers={"Accept": NDJSON}) as resp:
            if resp.status_code >= 400:
                resp.read()
                _decode(resp, _Call("POST", ""))
            for line in resp.iter_lines():
                if line.strip():
                    yield _event(line)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncClient(_Operations):
    """An asyncio client with the methods of :class:`Client`, each returning an awaitable."""

    def __init__(self, url: Optional[str] = None, api_key: Optional[str] = None, *, timeout: float = 120.0,
                 retries: int = 2, transport: Optional[httpx.AsyncBaseTransport] = None):
        self.url, self._key = _settings(url, api_key)
        self.retries = retries
        self._http = httpx.AsyncClient(base_url=self.url, headers={"X-API-Key": self._key}, timeout=timeout,
                                       transport=transport)

    async def _call(self, call: _Call) -> Any:
        import asyncio

        attempts = 1 + (self.retries if call.retry else 0)
        for attempt in range(attempts):
            try:
                resp = await self._http.request(call.method, call.path, params=call.params, json=call.json,
                                                content=call.content, headers=call.headers)
            except httpx.TransportError as e:
                if attempt + 1 == attempts:
                    raise ConnectionError(f"{call.method} {call.path}: {e}") from e
                await asyncio.sleep(0.2 * 2 ** attempt)
                continue
            return _decode(resp, call)

    async def exec_stream(self, vm_id: str, cmd: str, *, cwd: Optional[str] = None,
                          env: Optional[Mapping[str, str]] = None, stdin: Union[None, str, bytes] = None,
                          timeout_ms: Optional[int] = None, exec_id: Optional[str] = None) -> AsyncIterator[ExecEvent]:
        """Streamed exec: ``async for event in client.exec_stream(vm, cmd)``."""
        body = self._exec_body(cmd, cwd, env, stdin, timeout_ms, exec_id)
        async with self._http.stream("POST", f"/v1/vms/{vm_id}/exec", json=body,
                                     headers={"Accept": NDJSON}) as resp:
            if resp.status_code >= 400:
                await resp.aread()
                _decode(resp, _Call("POST", ""))
            async for line in resp.aiter_lines():
                if line.strip():
                    yield _event(line)

    def terminal(self, vm_id: str, *, cmd: Optional[str] = None, cols: Optional[int] = None,
                 rows: Optional[int] = None, session: Optional[str] = None):
        """``GET /v1/vms/{id}/pty``: ``async with client.terminal(vm) as term:`` — a login shell
        (or ``cmd``), or the running ``session`` re-attached (needs ``websockets``)."""
        from ._sockets import terminal

        return terminal(self.url, self._key, vm_id, cmd=cmd, cols=cols, rows=rows, session=session)

    def exec_interactive(self, vm_id: str, cmd: str, *, cwd: Optional[str] = None,
                         env: Optional[Mapping[str, str]] = None, timeout_ms: Optional[int] = None):
        """``GET /v1/vms/{id}/exec/ws``: ``async with client.exec_interactive(vm, "cat") as p:``
        then ``await p.write(...)``, ``await p.close_stdin()``, ``async for e in p.events()``."""
        from ._sockets import exec_socket

        request = _compact({"cmd": cmd, "cwd": cwd, "env": dict(env) if env else None, "timeoutMs": timeout_ms})
        return exec_socket(self.url, self._key, vm_id, request)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()
