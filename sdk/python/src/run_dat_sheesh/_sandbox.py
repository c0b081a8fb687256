"""A VM as an object: :class:`Sandbox` (sync) and :class:`AsyncSandbox`, each deleting its VM
when its ``with`` block ends, and :class:`Context`, a code context used the same way."""

from __future__ import annotations

from typing import Any, Optional, Union

from ._client import AsyncClient, Client, _Operations
from ._models import ContextInfo, Vm

_RUNS = {"python": "run_python", "typescript": "run_ts", "javascript": "run_js"}
_ALIASES = {"py": "python", "ts": "typescript", "js": "javascript"}


class _SandboxBase:
    """The operations of one VM. On an :class:`AsyncSandbox` each returns an awaitable."""

    def __init__(self, client: _Operations, vm: Vm, owns_client: bool = False):
        self.client = client
        self.vm = vm
        self._owns_client = owns_client

    @property
    def id(self) -> str:
        return self.vm.id

    def exec(self, cmd: str, **options: Any):
        """Runs a shell command (see :meth:`Client.exec`)."""
        return self.client.exec(self.id, cmd, **options)

    def exec_stream(self, cmd: str, **options: Any):
        """Streams a command's output as events (see :meth:`Client.exec_stream`)."""
        return self.client.exec_stream(self.id, cmd, **options)

    def run_ts(self, code: Optional[str] = None, **options: Any):
        return self.client.run_ts(self.id, code, **options)

    def run_js(self, code: Optional[str] = None, **options: Any):
        return self.client.run_js(self.id, code, **options)

    def run_python(self, code: Optional[str] = None, **options: Any):
        return self.client.run_python(self.id, code, **options)

    def upload_dir(self, local_dir, dest: str = "/workspace"):
        return self.client.upload_dir(self.id, local_dir, dest)

    def download_dir(self, path: str, local_dir):
        return self.client.download_dir(self.id, path, local_dir)

    def write_file(self, path: str, data: Union[str, bytes], mode: int = 0o644):
        return self.client.write_file(self.id, path, data, mode)

    def read_file(self, path: str):
        return self.client.read_file(self.id, path)

    def snapshot(self, *, include_memory: Optional[bool] = None):
        return self.client.create_snapshot(self.id, include_memory=include_memory)

    def logs(self, **options: Any):
        return self.client.logs(self.id, **options)

    def context(self, language: str, **options: Any) -> "Context":
        """A code context (``python``, ``typescript``/``ts``, ``javascript``/``js``), created when
        its ``with`` (or ``async with``) block starts and deleted when it ends."""
        return Context(self, _ALIASES.get(language, language), options)


class Sandbox(_SandboxBase):
    """A VM: ``with Sandbox.create() as vm: vm.exec("echo hi")`` deletes it on exit."""

    client: Client

    @classmethod
    def create(cls, cpu: int = 1, mem_mb: int = 256, *, client: Optional[Client] = None,
               url: Optional[str] = None, api_key: Optional[str] = None, **options: Any) -> "Sandbox":
        """Creates a RUNNING VM (options as for :meth:`Client.create_vm`)."""
        owns = client is None
        client = client or Client(url, api_key)
        try:
            return cls(client, client.create_vm(cpu, mem_mb, **options), owns)
        except BaseException:
            if owns:
                client.close()
            raise

    @classmethod
    def connect(cls, vm_id: str, *, client: Optional[Client] = None, url: Optional[str] = None,
                api_key: Optional[str] = None) -> "Sandbox":
        """The existing VM ``vm_id``."""
        owns = client is None
        client = client or Client(url, api_key)
        return cls(client, client.get_vm(vm_id), owns)

    def refresh(self) -> Vm:
        self.vm = self.client.get_vm(self.id)
        return self.vm

    def start(self) -> Vm:
        """Boots the stopped VM again; its workspace is as it was."""
        self.client.start_vm(self.id)
        return self.refresh()

    def stop(self) -> Vm:
        """Shuts the VM down, keeping its workspace."""
        self.client.stop_vm(self.id)
        return self.refresh()

    def kill(self) -> None:
        """Deletes the VM (and closes the client if this sandbox made it)."""
        try:
            self.client.delete_vm(self.id)
        finally:
            if self._owns_client:
                self.client.close()

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc) -> None:
        self.kill()


class AsyncSandbox(_SandboxBase):
    """A VM for asyncio: ``async with await AsyncSandbox.create() as vm: await vm.exec("ls")``."""

    client: AsyncClient

    @classmethod
    async def create(cls, cpu: int = 1, mem_mb: int = 256, *, client: Optional[AsyncClient] = None,
                     url: Optional[str] = None, api_key: Optional[str] = None, **options: Any) -> "AsyncSandbox":
        owns = client is None
        client = client or AsyncClient(url, api_key)
        try:
            return cls(client, await client.create_vm(cpu, mem_mb, **options), owns)
        except BaseException:
            if owns:
                await client.aclose()
            raise

    async def refresh(self) -> Vm:
        self.vm = await self.client.get_vm(self.id)
        return self.vm

    async def kill(self) -> None:
        try:
            await self.client.delete_vm(self.id)
        finally:
            if self._owns_client:
                await self.client.aclose()

    async def __aenter__(self) -> "AsyncSandbox":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.kill()


class Context:
    """A code context of a sandbox: top-level names defined by one :meth:`run` are there for the
    next. ``with vm.context("python") as ctx: ctx.run("x = 1"); ctx.run("x + 1").result == 2``."""

    def __init__(self, sandbox: _SandboxBase, language: str, options: dict):
        if language not in _RUNS:
            raise ValueError(f"language must be one of {', '.join(_RUNS)} (got {language!r})")
        self.sandbox = sandbox
        self.language = language
        self._options = options
        self.info: Optional[ContextInfo] = None

    @property
    def id(self) -> str:
        if self.info is None:
            raise RuntimeError("the context is not created yet: use it in a with block, or call create()")
        return self.info.context_id

    def run(self, code: str, **options: Any):
        """Runs ``code`` in the context; its last expression (or ``result``) is the result."""
        run = getattr(self.sandbox.client, _RUNS[self.language])
        return run(self.sandbox.id, code, context_id=self.id, **options)

    def restart(self):
        return self.sandbox.client.restart_context(self.sandbox.id, self.id)

    # Synchronous use
    def create(self) -> "Context":
        self.info = self.sandbox.client.create_context(self.sandbox.id, self.language, **self._options)
        return self

    def delete(self) -> None:
        self.sandbox.client.delete_context(self.sandbox.id, self.id)

    def __enter__(self) -> "Context":
        return self.create()

    def __exit__(self, *exc) -> None:
        self.delete()

    # Asynchronous use
    async def acreate(self) -> "Context":
        self.info = await self.sandbox.client.create_context(self.sandbox.id, self.language, **self._options)
        return self

    async def adelete(self) -> None:
        await self.sandbox.client.delete_context(self.sandbox.id, self.id)

    async def __aenter__(self) -> "Context":
        return await self.acreate()

    async def __aexit__(self, *exc) -> None:
        await self.adelete()
