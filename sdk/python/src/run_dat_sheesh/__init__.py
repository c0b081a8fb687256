"""Python client for run-dat-sheesh (rds): create microVM sandboxes, run commands and code in
them, move files, snapshot them.

    from run_dat_sheesh import Sandbox

    with Sandbox.create() as vm:          # $RDS_URL and $RDS_API_KEY
        print(vm.exec("echo hello").stdout)
"""

from ._client import AsyncClient, Client
from ._errors import (
    AuthenticationError,
    BadRequestError,
    ConflictError,
    ConnectionError,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitError,
    RdsError,
    ServerError,
)
from ._models import ContextInfo, ExecEvent, ExecResult, Health, Image, PtyToken, RunResult, Snapshot, Vm
from ._sandbox import AsyncSandbox, Context, Sandbox

__all__ = [
    "AsyncClient", "AsyncSandbox", "AuthenticationError", "BadRequestError", "Client", "ConflictError",
    "ConnectionError", "Context", "ContextInfo", "ExecEvent", "ExecResult", "Health", "Image", "NotFoundError",
    "PayloadTooLargeError", "PtyToken", "RateLimitError", "RdsError", "RunResult", "Sandbox", "ServerError",
    "Snapshot", "Vm",
]

# Which operation of /openapi.json each method implements ("METHOD /path" as the spec writes it),
# and the ones deliberately left out, with why. tests/test_coverage.py holds both against the spec.
OPERATIONS = {
    "GET /v1/health": "health",
    "POST /v1/vms": "create_vm",
    "GET /v1/vms": "list_vms",
    "GET /v1/vms/{id}": "get_vm",
    "DELETE /v1/vms/{id}": "delete_vm",
    "POST /v1/vms/{id}/start": "start_vm",
    "POST /v1/vms/{id}/stop": "stop_vm",
    "GET /v1/vms/{id}/logs": "logs",
    "GET /v1/vms/{id}/exec-logs": "exec_logs",
    "POST /v1/vms/{id}/exec": "exec",
    "POST /v1/vms/{id}/run-ts": "run_ts",
    "POST /v1/vms/{id}/run-js": "run_js",
    "POST /v1/vms/{id}/run-python": "run_python",
    "POST /v1/vms/{id}/contexts": "create_context",
    "GET /v1/vms/{id}/contexts": "list_contexts",
    "GET /v1/vms/{id}/contexts/{contextId}": "get_context",
    "DELETE /v1/vms/{id}/contexts/{contextId}": "delete_context",
    "POST /v1/vms/{id}/contexts/{contextId}/restart": "restart_context",
    "POST /v1/vms/{id}/files/upload": "upload",
    "GET /v1/vms/{id}/files/download": "download",
    "POST /v1/vms/{id}/snapshots": "create_snapshot",
    "GET /v1/snapshots": "list_snapshots",
    "GET /v1/snapshots/{id}": "get_snapshot",
    "DELETE /v1/snapshots/{id}": "delete_snapshot",
    "GET /v1/images": "list_images",
    "POST /v1/images": "create_image",
    "GET /v1/images/{id}": "get_image",
    "DELETE /v1/images/{id}": "delete_image",
    "POST /v1/images/{id}/set-default": "set_default_image",
    "PUT /v1/images/{id}/kernel": "upload_kernel",
    "PUT /v1/images/{id}/rootfs": "upload_rootfs",
    "PUT /v1/images/{id}/initrd": "upload_initrd",
    "PUT /v1/images/{id}/bundle": "upload_bundle",
    "PATCH /v1/vms/{id}/network": "update_network",
    "GET /v1/vms/{id}/peers": "list_peers",
    "PATCH /v1/vms/{id}/peers/{alias}": "set_peer_link",
    "DELETE /v1/vms/{id}/peers/{alias}": "delete_peer_link",
    "POST /v1/vms/{id}/peers/sync": "sync_peers",
    "GET /v1/peer-calls": "peer_calls",
    "PATCH /v1/vms/{id}/secrets": "set_secrets",
    "GET /v1/pool": "pool",
    "POST /v1/api-keys": "create_api_key",
    "GET /v1/api-keys": "list_api_keys",
    "DELETE /v1/api-keys/{id}": "revoke_api_key",
    "POST /v1/vms/{id}/pty-tokens": "create_pty_token",
    "GET /v1/vms/{id}/pty-sessions": "list_pty_sessions",
    "DELETE /v1/vms/{id}/pty-sessions/{sessionId}": "kill_pty_session",
    "GET /v1/vms/{id}/pty": "terminal",
    "GET /v1/vms/{id}/exec/ws": "exec_interactive",
}
# Operations only AsyncClient has (WebSockets are asyncio-only in the websockets versions
# Debian ships).
ASYNC_ONLY = {"terminal", "exec_interactive"}
MISSING = {}
