import { gunzipSync, gzipSync } from "node:zlib";

import {
  NodeApiError,
  NodeConnectionTypes,
  NodeOperationError,
  type IDataObject,
  type IExecuteFunctions,
  type IHttpRequestMethods,
  type IHttpRequestOptions,
  type INodeExecutionData,
  type INodeType,
  type INodeTypeDescription,
  type JsonObject,
} from "n8n-workflow";

const vmId = (operations: string[]) => ({
  displayName: "VM ID",
  name: "vmId",
  type: "string" as const,
  default: "",
  required: true,
  description: "The VM's ID, for example the ID a Create VM step returned",
  displayOptions: { show: { operation: operations } },
});

/** Run commands and code in run-dat-sheesh microVM sandboxes. */
export class RunDatSheesh implements INodeType {
  description: INodeTypeDescription = {
    displayName: "Run Dat Sheesh",
    name: "runDatSheesh",
    icon: { light: "file:rds.svg", dark: "file:rds.dark.svg" },
    group: ["transform"],
    version: 1,
    subtitle: '={{$parameter["operation"]}}',
    description: "Run untrusted code in microVM sandboxes (run-dat-sheesh)",
    defaults: { name: "Run Dat Sheesh" },
    inputs: [NodeConnectionTypes.Main],
    outputs: [NodeConnectionTypes.Main],
    credentials: [{ name: "runDatSheeshApi", required: true }],
    properties: [
      {
        displayName: "Operation",
        name: "operation",
        type: "options",
        noDataExpression: true,
        default: "exec",
        options: [
          { name: "Create Code Context", value: "createContext", action: "Create a code context" },
          { name: "Create Snapshot", value: "snapshot", action: "Snapshot a VM" },
          { name: "Create VM", value: "createVm", action: "Create a VM" },
          { name: "Delete VM", value: "deleteVm", action: "Delete a VM" },
          { name: "Download File", value: "downloadFile", action: "Download a file from a VM" },
          { name: "Execute Command", value: "exec", action: "Execute a shell command" },
          { name: "Run Code", value: "runCode", action: "Run code in a VM" },
          { name: "Upload File", value: "uploadFile", action: "Upload a file into a VM" },
        ],
      },
      { displayName: "CPUs", name: "cpu", type: "number", default: 1, displayOptions: { show: { operation: ["createVm"] } } },
      { displayName: "Memory (MiB)", name: "memMb", type: "number", default: 256, displayOptions: { show: { operation: ["createVm"] } } },
      {
        displayName: "Provider Secrets",
        name: "secretEnv",
        type: "string",
        typeOptions: { password: true, rows: 3 },
        default: "",
        description: "KEY=value per line: the VM's code gets them, the API never returns them",
        displayOptions: { show: { operation: ["createVm"] } },
      },
      {
        displayName: "Peer Links",
        name: "peerLinks",
        type: "string",
        default: "",
        placeholder: "weather=VM_ID, calc=VM_ID",
        description: "Providers this VM may call through the bridge, alias=VM_ID separated by commas",
        displayOptions: { show: { operation: ["createVm"] } },
      },
      {
        displayName: "Snapshot ID",
        name: "snapshotId",
        type: "string",
        default: "",
        description: "Start the VM from this snapshot",
        displayOptions: { show: { operation: ["createVm"] } },
      },
      vmId(["deleteVm", "exec", "runCode", "createContext", "uploadFile", "downloadFile", "snapshot"]),
      { displayName: "Command", name: "cmd", type: "string", default: "", required: true, displayOptions: { show: { operation: ["exec"] } } },
      { displayName: "Stdin", name: "stdin", type: "string", default: "", displayOptions: { show: { operation: ["exec"] } } },
      {
        displayName: "Language",
        name: "language",
        type: "options",
        default: "python",
        options: [
          { name: "Python", value: "python" },
          { name: "TypeScript", value: "typescript" },
          { name: "JavaScript", value: "javascript" },
        ],
        displayOptions: { show: { operation: ["runCode", "createContext"] } },
      },
      {
        displayName: "Code",
        name: "code",
        type: "string",
        typeOptions: { rows: 8 },
        default: "",
        required: true,
        description: "Python: assign result. TypeScript/JavaScript: result.set(value). In a context: the last expression.",
        displayOptions: { show: { operation: ["runCode"] } },
      },
      {
        displayName: "Context ID",
        name: "contextId",
        type: "string",
        default: "",
        description: "Run in this code context (variables survive between runs)",
        displayOptions: { show: { operation: ["runCode"] } },
      },
      {
        displayName: 'Timeout (Ms)',
        name: "timeoutMs",
        type: "number",
        default: 0,
        description: "0 for the manager's default",
        displayOptions: { show: { operation: ["exec", "runCode"] } },
      },
      {
        displayName: "Path",
        name: "path",
        type: "string",
        default: "/workspace/file",
        required: true,
        displayOptions: { show: { operation: ["uploadFile", "downloadFile"] } },
      },
      {
        displayName: "Binary Property",
        name: "binaryPropertyName",
        type: "string",
        default: "data",
        displayOptions: { show: { operation: ["uploadFile", "downloadFile"] } },
      },
    ],
		usableAsTool: true,
  };

  async execute(this: IExecuteFunctions): Promise<INodeExecutionData[][]> {
    const items = this.getInputData();
    const out: INodeExecutionData[] = [];
    const { baseUrl } = await this.getCredentials("runDatSheeshApi");
    const base = String(baseUrl).replace(/\/+$/, "");
    const api = async (method: IHttpRequestMethods, path: string, extra: Partial<IHttpRequestOptions> = {}) => {
      try {
        return await this.helpers.httpRequestWithAuthentication.call(this, "runDatSheeshApi", {
          method,
          url: `${base}${path}`,
          json: true,
          ...extra,
        });
      } catch (error) {
        throw new NodeApiError(this.getNode(), error as JsonObject);
      }
    };
    for (let i = 0; i < items.length; i++) {
      try {
        const operation = this.getNodeParameter("operation", i) as string;
        const param = <T>(name: string, fallback?: T) => this.getNodeParameter(name, i, fallback) as T;
        const vm = () => encodeURIComponent(param<string>("vmId"));
        const timeoutMs = () => param<number>("timeoutMs", 0) || undefined;
        let json: IDataObject;
        let binary: INodeExecutionData["binary"];
        switch (operation) {
          case "createVm": {
            const secretEnv = param<string>("secretEnv", "").split("\n").map((l) => l.trim()).filter(Boolean);
            const peerLinks = param<string>("peerLinks", "")
              .split(",")
              .map((l) => l.trim())
              .filter(Boolean)
              .map((l) => {
                const [alias, id] = l.split("=").map((s) => s.trim());
                if (!alias || !id) throw new NodeOperationError(this.getNode(), `peer link ${JSON.stringify(l)} is not alias=VM_ID`, { itemIndex: i });
                return { alias, vmId: id };
              });
            const body: IDataObject = { cpu: param<number>("cpu", 1), memMb: param<number>("memMb", 256) };
            if (secretEnv.length) body.secretEnv = secretEnv;
            if (peerLinks.length) body.peerLinks = peerLinks;
            if (param<string>("snapshotId", "")) body.userOverlaySnapshotId = param<string>("snapshotId");
            json = await api("POST", "/v1/vms", { body });
            break;
          }
          case "deleteVm":
            await api("DELETE", `/v1/vms/${vm()}`);
            json = { deleted: param<string>("vmId") };
            break;
          case "exec": {
            const body: IDataObject = { cmd: param<string>("cmd"), execId: crypto.randomUUID(), timeoutMs: timeoutMs() };
            if (param<string>("stdin", "")) body.stdin = param<string>("stdin");
            json = await api("POST", `/v1/vms/${vm()}/exec`, { body });
            break;
          }
          case "runCode": {
            const route = { python: "run-python", typescript: "run-ts", javascript: "run-js" }[param<string>("language")];
            const body: IDataObject = { code: param<string>("code"), execId: crypto.randomUUID(), timeoutMs: timeoutMs() };
            if (param<string>("contextId", "")) body.contextId = param<string>("contextId");
            json = await api("POST", `/v1/vms/${vm()}/${route}`, { body });
            break;
          }
          case "createContext":
            json = await api("POST", `/v1/vms/${vm()}/contexts`, { body: { language: param<string>("language") } });
            break;
          case "uploadFile": {
            const path = param<string>("path");
            const data = await this.helpers.getBinaryDataBuffer(i, param<string>("binaryPropertyName", "data"));
            const cut = path.lastIndexOf("/");
            const archive = tarGzOne(path.slice(cut + 1), data);
            await api("POST", `/v1/vms/${vm()}/files/upload`, {
              qs: { dest: cut > 0 ? path.slice(0, cut) : "/workspace" },
              body: archive,
              json: false,
              headers: { "content-type": "application/gzip" },
            });
            json = { uploaded: path, bytes: data.length };
            break;
          }
          case "downloadFile": {
            const path = param<string>("path");
            const archive = await api("GET", `/v1/vms/${vm()}/files/download`, { qs: { path }, json: false, encoding: "arraybuffer" });
            const file = firstFile(Buffer.from(archive as ArrayBuffer));
            if (!file) throw new NodeOperationError(this.getNode(), `${path} is not a file`, { itemIndex: i });
            const prop = param<string>("binaryPropertyName", "data");
            binary = { [prop]: await this.helpers.prepareBinaryData(file.data, file.name) };
            json = { path, bytes: file.data.length };
            break;
          }
          case "snapshot":
            json = await api("POST", `/v1/vms/${vm()}/snapshots`, { body: {} });
            break;
          default:
            throw new NodeOperationError(this.getNode(), `unknown operation ${operation}`, { itemIndex: i });
        }
        out.push({ json, ...(binary ? { binary } : {}), pairedItem: { item: i } });
      } catch (error) {
        if (this.continueOnFail()) {
          out.push({ json: { error: (error as Error).message }, pairedItem: { item: i } });
          continue;
        }
        const failure =
          error instanceof NodeApiError || error instanceof NodeOperationError
            ? error
            : new NodeOperationError(this.getNode(), error as Error, { itemIndex: i });
        throw failure;
      }
    }
    return [out];
  }
}

/** A tar.gz holding one file. */
export function tarGzOne(name: string, data: Buffer): Buffer {
  const header = Buffer.alloc(512);
  const put = (text: string, at: number) => header.write(text, at, "utf8");
  put(name.slice(0, 100), 0);
  put("0000644\0", 100);
  put("0000000\0", 108);
  put("0000000\0", 116);
  put(data.length.toString(8).padStart(11, "0") + "\0", 124);
  put(Math.floor(Date.now() / 1000).toString(8).padStart(11, "0") + "\0", 136);
  put("        ", 148);
  put("0", 156);
  put("ustar\u000000", 257);
  let sum = 0;
  for (const b of header) sum += b;
  put(sum.toString(8).padStart(6, "0") + "\0 ", 148);
  const pad = Buffer.alloc((512 - (data.length % 512)) % 512);
  return gzipSync(Buffer.concat([header, data, pad, Buffer.alloc(1024)]));
}

/** The first regular file of a tar.gz. */
export function firstFile(archive: Buffer): { name: string; data: Buffer } | undefined {
  const tar = gunzipSync(archive);
  let longName: string | undefined;
  for (let at = 0; at + 512 <= tar.length; ) {
    const h = tar.subarray(at, at + 512);
    if (h.every((b) => b === 0)) return undefined;
    const field = (from: number, len: number) => h.subarray(from, from + len).toString("utf8").replace(/\0.*$/s, "");
    const size = parseInt(field(124, 12).trim() || "0", 8);
    const type = field(156, 1) || "0";
    const body = tar.subarray(at + 512, at + 512 + size);
    at += 512 + Math.ceil(size / 512) * 512;
    if (type === "L") {
      longName = body.toString("utf8").replace(/\0.*$/s, "");
      continue;
    }
    if (type === "0") {
      const name = (longName ?? field(0, 100)).split("/").pop() || "file";
      return { name, data: Buffer.from(body) };
    }
    longName = undefined;
  }
  return undefined;
}
