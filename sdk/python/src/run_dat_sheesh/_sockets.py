"""The WebSocket routes for asyncio: an interactive terminal (``GET /v1/vms/{id}/pty``) and an
exec fed stdin while it runs (``GET /v1/vms/{id}/exec/ws``). Needs the ``websockets`` package
(``pip install run-dat-sheesh[terminal]``)."""

from __future__ import annotations

import json
from typing import Any, AsyncIterator, Dict, Optional, Union
from urllib.parse import quote, urlencode

from ._models import ExecEvent


def _connect(url: str, api_key: str):
    try:
        import websockets
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError("terminals need the websockets package: pip install 'run-dat-sheesh[terminal]'") from e
    headers = {"X-API-Key": api_key}
    major = int(websockets.__version__.split(".")[0])
    if major >= 14:
        return websockets.connect(url, additional_headers=headers, max_size=None)
    return websockets.connect(url, extra_headers=headers, max_size=None)


def _ws_url(base: str, path: str, query: Dict[str, Any]) -> str:
    query = {k: v for k, v in query.items() if v is not None}
    scheme_rest = base.replace("http", "ws", 1)
    return f"{scheme_rest}{path}" + (f"?{urlencode(query)}" if query else "")


class Terminal:
    """An interactive terminal: ``send`` keys, ``read`` output, ``resize``, ``signal``; ``exit_code``
    is set once the shell exits. Use with ``async with``."""

    def __init__(self, url: str, api_key: str):
        self._cm = _connect(url, api_key)
        self._ws = None
        self.session_id: Optional[str] = None
        self.exit: Optional[Dict[str, Any]] = None

    async def __aenter__(self) -> "Terminal":
        self._ws = await self._cm.__aenter__()
        hello = json.loads(await self._ws.recv())
        self.session_id = hello.get("sessionId")
        return self

    async def __aexit__(self, *exc) -> None:
        await self._cm.__aexit__(*exc)

    async def send(self, data: Union[str, bytes]) -> None:
        """Types ``data`` (``"\\x03"`` is Ctrl-C)."""
        await self._ws.send(data.encode() if isinstance(data, str) else data)

    async def resize(self, cols: int, rows: int) -> None:
        await self._ws.send(json.dumps({"type": "resize", "cols": cols, "rows": rows}))

    async def signal(self, name: str) -> None:
        await self._ws.send(json.dumps({"type": "signal", "signal": name}))

    async def read(self) -> Optional[bytes]:
        """The next output, or ``None`` once the shell exited (``exit`` then holds its status)."""
        import websockets

        while True:
            try:
                msg = await self._ws.recv()
            except websockets.ConnectionClosed:
                return None
            if isinstance(msg, bytes):
                return msg
            event = json.loads(msg)
            if event.get("type") == "exit":
                self.exit = event
                return None

    @property
    def exit_code(self) -> Optional[int]:
        return None if self.exit is None else self.exit.get("exitCode")


class ExecSocket:
    """An exec fed stdin while it runs: ``write`` stdin, ``close_stdin``, ``signal``, and
    ``async for event in sock.events()`` until its ``exit`` event. Use with ``async with``."""

    def __init__(self, url: str, api_key: str, request: Dict[str, Any]):
        self._cm = _connect(url, api_key)
        self._request = request
        self._ws = None

    async def __aenter__(self) -> "ExecSocket":
        self._ws = await self._cm.__aenter__()
        await self._ws.send(json.dumps(self._request))
        return self

    async def __aexit__(self, *exc) -> None:
        await self._cm.__aexit__(*exc)

    async def write(self, data: Union[str, bytes]) -> None:
        await self._ws.send(data.encode() if isinstance(data, str) else data)

    async def close_stdin(self) -> None:
        await self._ws.send(json.dumps({"type": "eof"}))

    async def signal(self, name: str) -> None:
        await self._ws.send(json.dumps({"type": "signal", "signal": name}))

    async def events(self) -> AsyncIterator[ExecEvent]:
        """The command's events as they come; ends after ``exit``. A refused request raises
        :class:`RdsError` with the manager's status."""
        import websockets

        from ._errors import error_for

        while True:
            try:
                msg = await self._ws.recv()
            except websockets.ConnectionClosed:
                return
            event = json.loads(msg)
            if event.get("type") == "error":
                raise error_for(int(event.get("status", 400)), {"error": {"code": "refused", "message": event.get("message", "")}})
            yield ExecEvent.from_json(event)
            if event.get("type") == "exit":
                return


def terminal(base: str, api_key: str, vm_id: str, **query: Any) -> Terminal:
    return Terminal(_ws_url(base, f"/v1/vms/{quote(vm_id, safe='')}/pty", query), api_key)


def exec_socket(base: str, api_key: str, vm_id: str, request: Dict[str, Any]) -> ExecSocket:
    return ExecSocket(_ws_url(base, f"/v1/vms/{quote(vm_id, safe='')}/exec/ws", {}), api_key, request)
