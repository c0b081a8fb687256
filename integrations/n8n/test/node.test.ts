// The n8n node against a live manager ($RDS_URL, $RDS_API_KEY): each operation through n8n's
// execute contract (parameters, credentials, binary data, errors), with a stand-in for the
// parts of n8n that run the node.

import assert from "node:assert/strict";
import { test } from "node:test";

import type { IExecuteFunctions, IHttpRequestOptions, INodeExecutionData } from "n8n-workflow";

import { RunDatSheeshApi } from "../credentials/RunDatSheeshApi.credentials";
import { firstFile, RunDatSheesh, tarGzOne } from "../nodes/RunDatSheesh/RunDatSheesh.node";

const url = process.env.RDS_URL!;
const apiKey = process.env.RDS_API_KEY!;
assert.ok(url && apiKey, "set RDS_URL and RDS_API_KEY to a running rds serve");

type Params = Record<string, unknown>;

/** What n8n hands a node's execute(): one item per parameter set. */
function n8n(params: Params[], options: { key?: string; continueOnFail?: boolean; binary?: INodeExecutionData["binary"] } = {}) {
  const items: INodeExecutionData[] = params.map(() => ({ json: {}, binary: options.binary }));
  const key = options.key ?? apiKey;
  return {
    getInputData: () => items,
    getNodeParameter: (name: string, i: number, fallback?: unknown) => {
      const value = params[i][name] ?? fallback;
      if (value === undefined) throw new Error(`no parameter ${name}`);
      return value;
    },
    getCredentials: async () => ({ baseUrl: url, apiKey: key }),
    getNode: () => ({ id: "1", name: "Run Dat Sheesh", type: "runDatSheesh", typeVersion: 1, position: [0, 0], parameters: {} }),
    continueOnFail: () => options.continueOnFail ?? false,
    helpers: {
      // The credential's `authenticate` puts the key in X-API-Key, as n8n does.
      async httpRequestWithAuthentication(_credential: string, o: IHttpRequestOptions) {
        const qs = o.qs ? `?${new URLSearchParams(o.qs as Record<string, string>)}` : "";
        const headers: Record<string, string> = { ...(o.headers as Record<string, string>), "X-API-Key": key };
        let body = o.body as BodyInit | undefined;
        if (o.json && o.body !== undefined) {
          headers["content-type"] = "application/json";
          body = JSON.stringify(o.body);
        }
        const resp = await fetch(`${o.url}${qs}`, { method: o.method, headers, body });
        if (!resp.ok) {
          const text = await resp.text();
          throw Object.assign(new Error(text), { httpCode: String(resp.status), description: text });
        }
        if (o.encoding === "arraybuffer") return resp.arrayBuffer();
        const text = await resp.text();
        return o.json && text ? JSON.parse(text) : text;
      },
      getBinaryDataBuffer: async (i: number, prop: string) => Buffer.from(items[i].binary![prop].data, "base64"),
      prepareBinaryData: async (data: Buffer, fileName: string) => ({ data: data.toString("base64"), fileName, mimeType: "application/octet-stream" }),
    },
  } as unknown as IExecuteFunctions;
}

const node = new RunDatSheesh();
async function run(params: Params, options?: Parameters<typeof n8n>[1]) {
  const [[item]] = await node.execute.call(n8n([params], options));
  return item;
}

test("every operation works against a live manager", async () => {
  const vm = (await run({ operation: "createVm", cpu: 1, memMb: 256, secretEnv: "N8N_TOKEN=n8n-s3cr3t" })).json;
  assert.equal(vm.state, "RUNNING");
  assert.deepEqual(vm.secretEnvKeys, ["N8N_TOKEN"]);
  const vmId = vm.id as string;
  try {
    const exec = (await run({ operation: "exec", vmId, cmd: 'tr a-z A-Z; echo "t=$N8N_TOKEN"', stdin: "shout\n" })).json;
    assert.equal(exec.stdout, "SHOUT\nt=[redacted:N8N_TOKEN]\n");
    assert.equal(exec.exitCode, 0);
    const py = (await run({ operation: "runCode", vmId, language: "python", code: "result = {'sum': 1 + 2}" })).json;
    assert.deepEqual(py.result, { sum: 3 });
    const ts = (await run({ operation: "runCode", vmId, language: "typescript", code: "result.set([1, 2].map((x) => x * 2))" })).json;
    assert.deepEqual(ts.result, [2, 4]);

    const ctx = (await run({ operation: "createContext", vmId, language: "python" })).json;
    await run({ operation: "runCode", vmId, language: "python", code: "count = 41", contextId: ctx.contextId });
    const again = (await run({ operation: "runCode", vmId, language: "python", code: "count + 1", contextId: ctx.contextId })).json;
    assert.equal(again.result, 42);

    const payload = Buffer.from("hello from n8n\n");
    const binary = { data: { data: payload.toString("base64"), mimeType: "text/plain", fileName: "hello.txt" } };
    const up = await run({ operation: "uploadFile", vmId, path: "/workspace/in/hello.txt", binaryPropertyName: "data" }, { binary });
    assert.deepEqual(up.json, { uploaded: "/workspace/in/hello.txt", bytes: payload.length });
    assert.equal((await run({ operation: "exec", vmId, cmd: "cat /workspace/in/hello.txt; stat -c %U /workspace/in/hello.txt" })).json.stdout, "hello from n8n\nuser\n");
    await run({ operation: "exec", vmId, cmd: "head -c 3000 /dev/urandom > /workspace/out.bin; sha256sum /workspace/out.bin" });
    const down = await run({ operation: "downloadFile", vmId, path: "/workspace/out.bin", binaryPropertyName: "file" });
    const downloaded = Buffer.from(down.binary!.file.data, "base64");
    assert.equal(downloaded.length, 3000);
    assert.equal(down.binary!.file.fileName, "out.bin");
    const sum = (await run({ operation: "exec", vmId, cmd: "sha256sum < /workspace/out.bin | cut -d' ' -f1" })).json.stdout as string;
    const { createHash } = await import("node:crypto");
    assert.equal(createHash("sha256").update(downloaded).digest("hex"), sum.trim());

    const snap = (await run({ operation: "snapshot", vmId })).json;
    assert.equal(snap.sourceVmId, vmId);
    const restored = (await run({ operation: "createVm", cpu: 1, memMb: 256, snapshotId: snap.id })).json;
    assert.equal((await run({ operation: "exec", vmId: restored.id, cmd: "cat /workspace/in/hello.txt" })).json.stdout, "hello from n8n\n");
    await run({ operation: "deleteVm", vmId: restored.id });
  } finally {
    assert.deepEqual((await run({ operation: "deleteVm", vmId })).json, { deleted: vmId });
  }
});

test("failures surface as n8n API errors, or as items with continueOnFail", async () => {
  await assert.rejects(run({ operation: "exec", vmId: "no-such-vm", cmd: "true" }), (e: { httpCode?: string }) => e.httpCode === "404");
  await assert.rejects(run({ operation: "createVm", cpu: 1, memMb: 256 }, { key: "not-the-key" }), (e: { httpCode?: string }) => e.httpCode === "401");
  await assert.rejects(run({ operation: "createVm", cpu: 0, memMb: 256 }), (e: { httpCode?: string }) => e.httpCode === "400");
  await assert.rejects(run({ operation: "createVm", cpu: 1, memMb: 256, peerLinks: "no-equals" }), /alias=VM_ID/);
  const item = await run({ operation: "exec", vmId: "no-such-vm", cmd: "true" }, { continueOnFail: true });
  assert.ok(String(item.json.error).length > 0);
});

test("the credential sends the key as X-API-Key and tests it on /v1/vms", () => {
  const cred = new RunDatSheeshApi();
  assert.equal(cred.name, "runDatSheeshApi");
  assert.deepEqual(cred.authenticate.properties.headers, { "X-API-Key": "={{$credentials.apiKey}}" });
  assert.equal(cred.test.request.url, "/v1/vms");
  assert.ok(node.description.credentials!.some((c) => c.name === cred.name));
});

test("single-file archives round-trip", () => {
  const data = Buffer.from("x".repeat(1500));
  assert.deepEqual(firstFile(tarGzOne("a.txt", data)), { name: "a.txt", data });
});
