"""The synchronous client against a live manager: VM lifecycle, exec, code, files, contexts,
snapshots, secrets, errors and safe retries."""

import httpx
import pytest

from run_dat_sheesh import (
    AuthenticationError,
    BadRequestError,
    Client,
    ConflictError,
    NotFoundError,
    RunResult,
    Sandbox,
    Vm,
)


def test_create_exec_run_and_delete_on_exit(client):
    with Sandbox.create(client=client) as vm:
        assert isinstance(vm.vm, Vm) and vm.vm.state == "RUNNING"
        r = vm.exec("echo hello; id -u; echo oops >&2; exit 3")
        assert (r.stdout, r.stderr, r.exit_code, r.ok) == ("hello\n1000\n", "oops\n", 3, False)
        assert vm.exec("cat", stdin="fed").stdout == "fed"
        py = vm.run_python("import sys\nresult = {'sum': 1 + 2, 'v': sys.version_info[0]}")
        assert isinstance(py, RunResult) and py.result == {"sum": 3, "v": 3}
        ts = vm.run_ts("result.set({ n: [1, 2].map((x) => x * 2) })")
        assert ts.result == {"n": [2, 4]}
        events = list(vm.exec_stream("echo a; echo b >&2; exit 2"))
        assert [(e.type, e.data) for e in events[:-1]] == [("stdout", "a\n"), ("stderr", "b\n")]
        assert (events[-1].type, events[-1].exit_code) == ("exit", 2)
        vm_id = vm.id
        assert any(v.id == vm_id for v in client.list_vms())
    with pytest.raises(NotFoundError) as e:
        client.get_vm(vm_id)
    assert e.value.status == 404


def test_files_round_trip(client, tmp_path):
    src = tmp_path / "src"
    (src / "pkg" / "deep").mkdir(parents=True)
    (src / "top.txt").write_text("top\n")
    (src / "pkg" / "deep" / "data.bin").write_bytes(bytes(range(256)) * 8)
    with Sandbox.create(client=client) as vm:
        vm.upload_dir(src, "/workspace/project")
        listed = vm.exec("cd /workspace/project && find . -type f | sort && stat -c %U top.txt").stdout
        assert listed == "./pkg/deep/data.bin\n./top.txt\nuser\n"
        out = vm.download_dir("/workspace/project", tmp_path / "back")
        back = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
        assert back and all(name.endswith(("top.txt", "data.bin")) for name in back), back
        data = [p for p in out.rglob("data.bin")][0].read_bytes()
        assert data == bytes(range(256)) * 8
        vm.write_file("/workspace/notes/hello.txt", "written by the SDK\n")
        assert vm.read_file("/workspace/notes/hello.txt") == b"written by the SDK\n"
        assert vm.exec("cat /workspace/notes/hello.txt").stdout == "written by the SDK\n"


def test_code_contexts_keep_their_state(client):
    with Sandbox.create(client=client) as vm:
        with vm.context("python") as ctx:
            ctx.run("import math\ncount = 41")
            assert ctx.run("count += 1\nresult = count").result == 42
            assert client.get_context(vm.id, ctx.id).runs == 2
            ctx.restart()
            assert ctx.run("result = 'count' in globals()").result is False
        assert client.list_contexts(vm.id) == []
        with vm.context("ts") as ctx:
            ctx.run("const greet = (n: string) => `hi ${n}`;")
            assert ctx.run("greet('rds')").result == "hi rds"


def test_snapshots_start_new_vms(client):
    with Sandbox.create(client=client) as vm:
        vm.write_file("/workspace/state.txt", "kept\n")
        snap = vm.snapshot()
        assert snap.id and snap.source_vm_id == vm.id
        assert client.get_snapshot(snap.id).id == snap.id
        assert any(s.id == snap.id for s in client.list_snapshots())
    try:
        with Sandbox.create(client=client, snapshot_id=snap.id) as restored:
            assert restored.read_file("/workspace/state.txt") == b"kept\n"
    finally:
        client.delete_snapshot(snap.id)
    with pytest.raises(NotFoundError):
        client.get_snapshot(snap.id)


def test_a_providers_secrets_stay_out_of_its_output(client):
    with Sandbox.create(client=client, secret_env={"SDK_TOKEN": "sdk-s3cr3t-value"}) as vm:
        assert vm.vm.secret_env_keys == ["SDK_TOKEN"]
        assert vm.exec('echo "t=$SDK_TOKEN"').stdout == "t=[redacted:SDK_TOKEN]\n"
        manifest = (
            '{"sdk": {"name": "calc", "description": "adds"},'
            ' "exports": [{"name": "add", "module": "calc.py", "description": "a + b"}]}'
        )
        vm.write_file("/workspace/.rds-peer/manifest.json", manifest)
        vm.write_file("/workspace/calc.py", "def add(args):\n    return args['a'] + args['b']\n")
        with Sandbox.create(client=client, peer_links=[("prov", vm.id)]) as consumer:
            called = consumer.run_python("from peers import prov\nresult = prov.add(a=2, b=3)")
            assert called.result == 5, called
            assert client.sync_peers(consumer.id)
            assert [link["alias"] for link in client.list_peers(consumer.id)] == ["prov"]
            client.delete_peer_link(consumer.id, "prov")
            assert client.list_peers(consumer.id) == []


def test_errors_are_typed_with_status_and_code(client, settings):
    with pytest.raises(BadRequestError) as e:
        client.create_vm(cpu=0)
    assert e.value.status == 400 and "cpu" in e.value.message
    with pytest.raises(NotFoundError) as e:
        client.exec("no-such-vm", "true")
    assert e.value.status == 404 and e.value.code
    with Client(settings[0], "not-the-key") as stranger:
        with pytest.raises(AuthenticationError) as e:
            stranger.list_vms()
    assert e.value.status == 401
    with Sandbox.create(client=client) as vm:
        vm.stop()
        with pytest.raises(ConflictError) as e:
            vm.exec("true")
        assert e.value.status == 409
        vm.start()
        assert vm.exec("echo back").stdout == "back\n"


class _LosesFirstExecAnswer(httpx.BaseTransport):
    """Forwards everything, but drops the answer to the first exec after it ran, as a broken
    connection would."""

    def __init__(self):
        self.inner = httpx.HTTPTransport()
        self.exec_bodies = []

    def handle_request(self, request):
        response = self.inner.handle_request(request)
        if request.url.path.endswith("/exec"):
            self.exec_bodies.append(request.content)
            if len(self.exec_bodies) == 1:
                response.read()
                raise httpx.ReadError("connection lost", request=request)
        return response


def test_a_retried_exec_runs_once(client, settings):
    with Sandbox.create(client=client) as vm:
        transport = _LosesFirstExecAnswer()
        with Client(*settings, transport=transport) as flaky:
            r = flaky.exec(vm.id, "echo ran >> /workspace/count; wc -l < /workspace/count")
        assert r.stdout.strip() == "1"
        assert len(transport.exec_bodies) == 2 and transport.exec_bodies[0] == transport.exec_bodies[1]
        assert vm.exec("cat /workspace/count").stdout == "ran\n"


def test_api_keys_are_created_used_and_revoked(client, settings):
    created = client.create_api_key("sdk test", expires_in_days=1)
    with Client(settings[0], created["key"]) as holder:
        assert isinstance(holder.list_vms(), list)
        assert any(k["id"] == created["id"] for k in client.list_api_keys())
        client.revoke_api_key(created["id"])
        with pytest.raises(AuthenticationError):
            holder.list_vms()
