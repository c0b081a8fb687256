"""The asyncio client against a live manager."""

import pytest

from run_dat_sheesh import AsyncClient, AsyncSandbox, NotFoundError


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
