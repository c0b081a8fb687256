"""The asyncio client against a live manager."""

import asyncio

import pytest

from run_dat_sheesh import AsyncClient, AsyncSandbox, BadRequestError, NotFoundError


async def test_async_sandbox_execs_runs_and_streams(settings):
    async with AsyncClient(*settings) as client:
        async with await AsyncSandbox.create(client=client) as vm:
            r = await vm.exec("echo async")
            assert r.stdout == "async\n"
            assert (await vm.run_js("result.set(6 * 7)")).result == 42
            events = [e async for e in vm.exec_stream("echo one; echo two")]
            assert "".join(e.data for e in events if e.type == "stdout") == "one\ntwo\n"
            assert events[-1].exit_code == 0
            async with vm.context("python") as ctx:
                await ctx.run("total = 10")
                assert (await ctx.run("total *= 2\nresult = total")).result == 20
            await vm.write_file("/workspace/a.txt", b"bytes")
            assert await vm.read_file("/workspace/a.txt") == b"bytes"
            vm_id = vm.id
        with pytest.raises(NotFoundError):
            await client.get_vm(vm_id)


async def test_a_terminal_and_an_interactive_exec(settings):
    async with AsyncClient(*settings) as client:
        async with await AsyncSandbox.create(client=client) as vm:
            async with client.terminal(vm.id, cols=100, rows=30) as term:
                assert term.session_id
                await term.send("stty size; echo TERM=$TERM\r")
                seen = b""
                while b"TERM=xterm-256color" not in seen:
                    chunk = await asyncio.wait_for(term.read(), 30)
                    assert chunk is not None, seen
                    seen += chunk
                assert b"30 100" in seen
                await term.send("exit 7\r")
                while await asyncio.wait_for(term.read(), 30) is not None:
                    pass
                assert term.exit_code == 7

            async with client.exec_interactive(vm.id, 'while read -r l; do echo "got:$l"; done; exit 3') as proc:
                await proc.write("one\n")
                events = proc.events()
                first = await asyncio.wait_for(events.__anext__(), 30)
                assert (first.type, first.data) == ("stdout", "got:one\n")
                await proc.write("two\n")
                await proc.close_stdin()
                rest = [e async for e in events]
                assert "".join(e.data for e in rest if e.type == "stdout") == "got:two\n"
                assert (rest[-1].type, rest[-1].exit_code) == ("exit", 3)

            with pytest.raises(BadRequestError):
                async with client.exec_interactive(vm.id, "") as proc:
                    [e async for e in proc.events()]
