// The TypeScript SDK against a live manager ($RDS_URL, $RDS_API_KEY; scripts/test starts one).

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtemp, mkdir, readFile, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { fileURLToPath, pathToFileURL } from "node:url";
import ts from "typescript";

import {
  AuthenticationError,
  BadRequestError,
  ConflictError,
  MISSING,
  NotFoundError,
  OPERATIONS,
  RdsClient,
  Sandbox,
  type ExecEvent,
} from "../src/index.js";

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, "..", "..");
const url = process.env.RDS_URL!;
const apiKey = process.env.RDS_API_KEY!;
assert.ok(url && apiKey, "set RDS_URL and RDS_API_KEY to a running rds serve");
const client = new RdsClient({ url, apiKey });

test("create, exec, run code, stream, and delete when the scope ends", async () => {
  let id: string;
  {
    await using vm = await Sandbox.create({ client });
    id = vm.id;
    assert.equal(vm.vm.state, "RUNNING");
    const r = await vm.exec("echo hello; id -u; echo oops >&2; exit 3");
    assert.deepEqual([r.stdout, r.stderr, r.exitCode], ["hello\n1000\n", "oops\n", 3]);
    assert.equal((await vm.exec("cat", { stdin: "fed" })).stdout, "fed");
    assert.deepEqual((await vm.runPython("result = {'sum': 1 + 2}")).result, { sum: 3 });
    assert.deepEqual((await vm.runTs("result.set([1, 2].map((x: number) => x * 2))")).result, [2, 4]);
    assert.equal((await vm.runJs("result.set(6 * 7)")).result, 42);
    const events: ExecEvent[] = [];
    for await (const e of vm.execStream("echo a; echo b >&2; exit 2")) events.push(e);
    assert.deepEqual(events.slice(0, 2), [{ type: "stdout", data: "a\n" }, { type: "stderr", data: "b\n" }]);
    const exit = events.at(-1)!;
    assert.equal(exit.type, "exit");
    assert.equal(exit.type === "exit" && exit.exitCode, 2);
    assert.ok((await client.listVms()).some((v) => v.id === id));
  }
  await assert.rejects(client.getVm(id), (e: unknown) => e instanceof NotFoundError && e.status === 404);
});

test("files: a directory up and back, single files", async () => {
  const dir = await mkdtemp(join(tmpdir(), "rds-sdk-ts-"));
  await mkdir(join(dir, "src", "pkg", "deep"), { recursive: true });
  await writeFile(join(dir, "src", "top.txt"), "top\n");
  const blob = new Uint8Array(4096).map((_, i) => i % 251);
  await writeFile(join(dir, "src", "pkg", "deep", "data.bin"), blob);
  await using vm = await Sandbox.create({ client });
  await vm.uploadDir(join(dir, "src"), "/workspace/project");
  const listed = await vm.exec("cd /workspace/project && find . -type f | sort && stat -c %U top.txt");
  assert.equal(listed.stdout, "./pkg/deep/data.bin\n./top.txt\nuser\n");
  const written = await vm.downloadDir("/workspace/project", join(dir, "back"));
  assert.deepEqual(written.sort(), ["pkg/deep/data.bin", "top.txt"]);
  assert.deepEqual(new Uint8Array(await readFile(join(dir, "back", "pkg", "deep", "data.bin"))), blob);
  const long = `/workspace/${"d".repeat(60)}/${"f".repeat(70)}.txt`;
  await vm.writeFile(long, "long name\n");
  assert.equal(new TextDecoder().decode(await vm.readFile(long)), "long name\n");
});

test("code contexts keep their state until restarted", async () => {
  await using vm = await Sandbox.create({ client });
  {
    await using ctx = await vm.context("python");
    await ctx.run("count = 41");
    assert.equal((await ctx.run("count += 1\nresult = count")).result, 42);
    assert.equal((await client.getContext(vm.id, ctx.id)).runs, 2);
    await ctx.restart();
    assert.equal((await ctx.run("result = 'count' in globals()")).result, false);
  }
  assert.deepEqual(await client.listContexts(vm.id), []);
});

test("snapshots start new VMs", async () => {
  let snapshotId: string;
  {
    await using vm = await Sandbox.create({ client });
    await vm.writeFile("/workspace/state.txt", "kept\n");
    const snap = await vm.snapshot();
    snapshotId = snap.id;
    assert.equal(snap.sourceVmId, vm.id);
    assert.ok((await client.listSnapshots()).some((s) => s.id === snap.id));
  }
  try {
    await using restored = await Sandbox.create({ client, snapshotId });
    assert.equal(new TextDecoder().decode(await restored.readFile("/workspace/state.txt")), "kept\n");
  } finally {
    await client.deleteSnapshot(snapshotId);
  }
  await assert.rejects(client.getSnapshot(snapshotId), NotFoundError);
});

test("secrets stay out of a provider's output; peers link and unlink", async () => {
  await using provider = await Sandbox.create({ client, secretEnv: { TS_TOKEN: "ts-s3cr3t-value" } });
  assert.deepEqual(provider.vm.secretEnvKeys, ["TS_TOKEN"]);
  assert.equal((await provider.exec('echo "t=$TS_TOKEN"')).stdout, "t=[redacted:TS_TOKEN]\n");
  const manifest = { sdk: { name: "calc", description: "adds" }, exports: [{ name: "add", module: "calc.py", description: "a + b" }] };
  await provider.writeFile("/workspace/.rds-peer/manifest.json", JSON.stringify(manifest));
  await provider.writeFile("/workspace/calc.py", "def add(args):\n    return args['a'] + args['b']\n");
  await using consumer = await Sandbox.create({ client, peerLinks: [{ alias: "calc", vmId: provider.id }] });
  assert.equal((await consumer.runPython("from peers import calc\nresult = calc.add(a=2, b=3)")).result, 5);
  assert.deepEqual((await client.listPeers(consumer.id)).map((l) => l.alias), ["calc"]);
  await client.deletePeerLink(consumer.id, "calc");
  assert.deepEqual(await client.listPeers(consumer.id), []);
});

test("errors are typed with status and code", async () => {
  await assert.rejects(client.createVm({ cpu: 0 }), (e: unknown) => e instanceof BadRequestError && e.message.includes("cpu"));
  await assert.rejects(client.exec("no-such-vm", "true"), (e: unknown) => e instanceof NotFoundError && e.status === 404);
  const stranger = new RdsClient({ url, apiKey: "not-the-key" });
  await assert.rejects(stranger.listVms(), (e: unknown) => e instanceof AuthenticationError && e.status === 401);
  await using vm = await Sandbox.create({ client });
  await vm.stop();
  await assert.rejects(vm.exec("true"), (e: unknown) => e instanceof ConflictError && e.status === 409);
  await vm.start();
  assert.equal((await vm.exec("echo back")).stdout, "back\n");
});

test("a retried exec runs once", async () => {
  await using vm = await Sandbox.create({ client });
  const bodies: string[] = [];
  // Forwards everything, but loses the answer to the first exec after it ran.
  const flaky: typeof fetch = async (input, init) => {
    const resp = await fetch(input, init);
    if (String(input).endsWith("/exec")) {
      bodies.push(String(init?.body));
      if (bodies.length === 1) {
        await resp.arrayBuffer();
        throw new TypeError("fetch failed: connection lost");
      }
    }
    return resp;
  };
  const r = await new RdsClient({ url, apiKey, fetch: flaky }).exec(vm.id, "echo ran >> /workspace/count; wc -l < /workspace/count");
  assert.equal(r.stdout.trim(), "1");
  assert.equal(bodies.length, 2);
  assert.equal(bodies[0], bodies[1]);
  assert.equal((await vm.exec("cat /workspace/count")).stdout, "ran\n");
});

test("a terminal over the platform WebSocket with a single-use token", async () => {
  await using vm = await Sandbox.create({ client });
  const socket = new WebSocket(await client.terminalUrl(vm.id, { cmd: "echo from-the-terminal; exit 7" }));
  socket.binaryType = "arraybuffer";
  let output = "";
  const exit = await new Promise<Record<string, unknown>>((resolve, reject) => {
    socket.onmessage = (m) => {
      if (typeof m.data === "string") {
        const msg = JSON.parse(m.data);
        if (msg.type === "exit") resolve(msg);
      } else output += new TextDecoder().decode(m.data);
    };
    socket.onerror = () => reject(new Error("the terminal socket failed"));
    setTimeout(() => reject(new Error(`no exit; output ${JSON.stringify(output)}`)), 30_000).unref();
  });
  socket.close();
  assert.ok(output.includes("from-the-terminal"), output);
  assert.equal(exit.exitCode, 7);
});

test("API keys are created, used and revoked", async () => {
  const created = await client.createApiKey("ts sdk test", { expiresInDays: 1 });
  const holder = new RdsClient({ url, apiKey: created.key });
  assert.ok(Array.isArray(await holder.listVms()));
  assert.ok((await client.listApiKeys()).some((k) => k.id === created.id));
  await client.revokeApiKey(created.id);
  await assert.rejects(holder.listVms(), AuthenticationError);
});

test("every operation of /openapi.json is implemented or listed as missing", async () => {
  const spec = await (await fetch(`${url}/openapi.json`)).json();
  const ops = Object.entries(spec.paths as Record<string, object>).flatMap(([path, item]) =>
    Object.keys(item).map((m) => `${m.toUpperCase()} ${path}`),
  );
  const listed = new Set([...Object.keys(OPERATIONS), ...Object.keys(MISSING)]);
  assert.deepEqual(ops.filter((op) => !listed.has(op)), [], "operations neither implemented nor listed");
  assert.deepEqual([...listed].filter((op) => !ops.includes(op)), [], "listed operations the API does not have");
  for (const [op, method] of Object.entries(OPERATIONS)) {
    assert.equal(typeof client[method], "function", `${method} for ${op}`);
  }
});

test("the README's examples run as written", async () => {
  const readme = await readFile(join(root, "README.md"), "utf8");
  const blocks = [...readme.matchAll(/```ts\n([\s\S]*?)```/g)].map((m) => m[1]);
  assert.ok(blocks.length >= 3);
  const dir = await mkdtemp(join(tmpdir(), "rds-sdk-readme-"));
  const entry = pathToFileURL(join(root, "dist", "src", "index.js")).href;
  for (const [i, block] of blocks.entries()) {
    const js = ts.transpileModule(block.replaceAll('"run-dat-sheesh"', JSON.stringify(entry)), {
      compilerOptions: { target: ts.ScriptTarget.ES2022, module: ts.ModuleKind.ESNext },
    }).outputText;
    const file = join(dir, `example-${i}.mjs`);
    await writeFile(file, js);
    await import(pathToFileURL(file).href);
  }
});

test("the same build runs on Deno", () => {
  const script = `import { Sandbox } from ${JSON.stringify(pathToFileURL(join(root, "dist", "src", "index.js")).href)};
const vm = await Sandbox.create();
try {
  const r = await vm.runPython("result = 2 ** 10");
  const ctx = await vm.context("js");
  await ctx.run("let n = 1");
  console.log(JSON.stringify({ r: r.result, n: (await ctx.run("n + 1")).result }));
} finally { await vm.kill(); }`;
  const out = spawnSync("deno", ["eval", "--ext=js", script], { env: process.env, encoding: "utf8", timeout: 60_000 });
  assert.equal(out.status, 0, out.stderr);
  assert.deepEqual(JSON.parse(out.stdout.trim().split("\n").at(-1)!), { r: 1024, n: 2 });
});
