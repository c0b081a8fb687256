// run-dat-sheesh client for TypeScript and JavaScript: fetch-based ESM for Node 20+ and Deno.
//
//   import { Sandbox } from "run-dat-sheesh";
//   await using vm = await Sandbox.create();          // RDS_URL, RDS_API_KEY
//   console.log((await vm.exec("echo hi")).stdout);
//
// Every exec and run carries an execId (generated unless given), so a call whose connection
// failed is retried safely: the manager joins the first attempt instead of running it twice.

import { packTarGz, unpackTarGz, type TarEntry } from "./tar.js";

export { packTarGz, unpackTarGz, type TarEntry };

// ---- Models (the manager's JSON, camelCase as sent) ----

export interface Vm {
  id: string;
  state: "CREATING" | "RUNNING" | "STOPPED" | "DELETING" | "DELETED" | "ERROR" | string;
  cpu: number;
  memMb: number;
  diskSizeMb: number;
  runtime: string;
  isolation: string;
  outboundInternet: boolean;
  imageId?: string | null;
  snapshotId?: string | null;
  provisionMode?: string;
  stateReason?: string | null;
  guestIp?: string | null;
  secretEnvKeys?: string[];
  peerLinks?: Array<{ alias: string; vmId: string; sourceMode?: string }>;
  network?: Record<string, unknown>;
  createdAt: number;
  updatedAt: number;
}

export interface ExecResult {
  exitCode: number | null;
  stdout: string;
  stderr: string;
  stdoutTruncated?: boolean;
  stderrTruncated?: boolean;
  timedOut?: boolean;
  signal?: number | null;
  durationMs?: number;
  oomKilled?: boolean;
}

export interface RunResult<T = unknown> extends ExecResult {
  result?: T;
  error?: { name?: string; message?: string; stack?: string; [k: string]: unknown } | null;
  contextRestarted?: boolean;
}

export type ExecEvent =
  | { type: "stdout"; data: string }
  | { type: "stderr"; data: string }
  | ({ type: "exit" } & Omit<ExecResult, "stdout" | "stderr">);

export interface Snapshot {
  id: string;
  kind: string;
  content: string;
  state: string;
  runtime: string;
  internal: boolean;
  cpu: number;
  memMb: number;
  diskSizeMb: number;
  sizeBytes: number;
  hasMemory: boolean;
  imageId?: string | null;
  sourceVmId?: string | null;
  createdAt: number;
}

export interface Image {
  id: string;
  name: string;
  description: string;
  isDefault: boolean;
  hasKernel: boolean;
  hasRootfs: boolean;
  hasInitrd: boolean;
  createdAt: number;
  [k: string]: unknown;
}

export interface ContextInfo {
  contextId: string;
  language: "python" | "typescript" | "javascript";
  cwd: string;
  runs: number;
  restarts: number;
  busy: boolean;
  idleTimeoutMs: number;
  createdAt: number;
  lastUsedAt: number;
}

export interface PtyToken {
  token: string;
  expiresAt: number;
}

export interface Health {
  status: string;
  version: string;
  runtime: string;
  runtimeReason: string;
  isolation: string;
  installationId: string;
}

export interface CreateVmOptions {
  cpu?: number;
  memMb?: number;
  diskSizeMb?: number;
  imageId?: string;
  outboundInternet?: boolean;
  allowIps?: string[];
  allowDomains?: string[];
  /** Provider secrets: `{ KEY: "value" }` or `["KEY=value"]`. */
  secretEnv?: Record<string, string> | string[];
  /** Providers this VM may call: `[{ alias, vmId }]`. */
  peerLinks?: Array<{ alias: string; vmId: string; sourceMode?: string }>;
  /** Start from this snapshot. */
  snapshotId?: string;
}

export interface ExecOptions {
  cwd?: string;
  env?: Record<string, string>;
  stdin?: string;
  timeoutMs?: number;
  execId?: string;
}

export interface RunOptions {
  path?: string;
  args?: string[];
  env?: Record<string, string>;
  timeoutMs?: number;
  contextId?: string;
  allowNet?: boolean;
  execId?: string;
}

export type Language = "python" | "typescript" | "javascript";

// ---- Errors ----

/** The manager refused or failed a request: `status` (0 when unreachable), `code`, `message`. */
export class RdsError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(`${status} ${code}: ${message}`);
    this.name = new.target.name;
  }
}
export class BadRequestError extends RdsError {}
export class AuthenticationError extends RdsError {}
export class NotFoundError extends RdsError {}
export class ConflictError extends RdsError {}
export class PayloadTooLargeError extends RdsError {}
export class RateLimitError extends RdsError {
  retryAfter?: number;
}
export class ServerError extends RdsError {}
export class ConnectionError extends RdsError {
  constructor(message: string) {
    super(0, "connection", message);
  }
}

const ERRORS: Record<number, new (s: number, c: string, m: string) => RdsError> = {
  400: BadRequestError,
  401: AuthenticationError,
  404: NotFoundError,
  409: ConflictError,
  413: PayloadTooLargeError,
  429: RateLimitError,
};

async function errorOf(resp: Response): Promise<RdsError> {
  const text = await resp.text();
  let code = "error";
  let message = text;
  try {
    const body = JSON.parse(text);
    code = body?.error?.code ?? code;
    message = body?.error?.message ?? body?.message ?? text;
  } catch {
    // not JSON: the text is the message
  }
  const Kind = ERRORS[resp.status] ?? (resp.status >= 500 ? ServerError : RdsError);
  const err = new Kind(resp.status, code, message || `HTTP ${resp.status}`);
  if (err instanceof RateLimitError) {
    const after = Number(resp.headers.get("retry-after"));
    if (Number.isFinite(after)) err.retryAfter = after;
  }
  return err;
}

// ---- The client ----

export interface ClientOptions {
  /** Default: `RDS_URL`, else `http://127.0.0.1:3000`. */
  url?: string;
  /** Default: `RDS_API_KEY`. */
  apiKey?: string;
  /** Retries of calls that are safe to repeat (GETs, exec and runs with their execId). */
  retries?: number;
  /** A `fetch` to use instead of the global one. */
  fetch?: typeof fetch;
}

interface Call {
  method: string;
  path: string;
  query?: Record<string, string | number | undefined>;
  json?: unknown;
  body?: Uint8Array;
  contentType?: string;
  accept?: string;
  retry?: boolean;
}

function env(name: string): string | undefined {
  const g = globalThis as { process?: { env: Record<string, string | undefined> }; Deno?: { env: { get(n: string): string | undefined } } };
  return g.process?.env?.[name] ?? g.Deno?.env.get(name);
}

function compact<T extends Record<string, unknown>>(value: T): Partial<T> {
  return Object.fromEntries(Object.entries(value).filter(([, v]) => v !== undefined)) as Partial<T>;
}

function secretEnv(value: CreateVmOptions["secretEnv"]): string[] | undefined {
  if (value === undefined) return undefined;
  return Array.isArray(value) ? value : Object.entries(value).map(([k, v]) => `${k}=${v}`);
}

const enc = (s: string) => encodeURIComponent(s);

/** One method per operation of the API. */
export class RdsClient {
  readonly url: string;
  readonly retries: number;
  #key: string;
  #fetch: typeof fetch;

  constructor(options: ClientOptions = {}) {
    this.url = (options.url ?? env("RDS_URL") ?? "http://127.0.0.1:3000").replace(/\/+$/, "");
    const key = options.apiKey ?? env("RDS_API_KEY");
    if (!key) throw new Error("an API key is needed: pass apiKey or set RDS_API_KEY");
    this.#key = key;
    this.retries = options.retries ?? 2;
    this.#fetch = options.fetch ?? globalThis.fetch.bind(globalThis);
  }

  /** Sends a call; the response once its status is a success. */
  async #send(call: Call): Promise<Response> {
    const query = call.query ? Object.entries(call.query).filter(([, v]) => v !== undefined) : [];
    const qs = query.length ? `?${new URLSearchParams(query.map(([k, v]) => [k, String(v)]))}` : "";
    const headers: Record<string, string> = { "x-api-key": this.#key };
    let body: BodyInit | undefined;
    if (call.json !== undefined) {
      headers["content-type"] = "application/json";
      body = JSON.stringify(call.json);
    } else if (call.body) {
      headers["content-type"] = call.contentType ?? "application/octet-stream";
      body = call.body;
    }
    if (call.accept) headers.accept = call.accept;
    const attempts = 1 + (call.retry ? this.retries : 0);
    for (let attempt = 0; ; attempt++) {
      let resp: Response;
      try {
        resp = await this.#fetch(`${this.url}${call.path}${qs}`, { method: call.method, headers, body });
      } catch (e) {
        if (attempt + 1 >= attempts) throw new ConnectionError(`${call.method} ${call.path}: ${e}`);
        await new Promise((r) => setTimeout(r, 200 * 2 ** attempt));
        continue;
      }
      if (!resp.ok) throw await errorOf(resp);
      return resp;
    }
  }

  async #json<T>(call: Call): Promise<T> {
    const resp = await this.#send(call);
    const text = await resp.text();
    return (text ? JSON.parse(text) : undefined) as T;
  }

  async #none(call: Call): Promise<void> {
    await (await this.#send(call)).arrayBuffer();
  }

  async #bytes(call: Call): Promise<Uint8Array> {
    return new Uint8Array(await (await this.#send(call)).arrayBuffer());
  }

  // Health, VMs
  health(): Promise<Health> {
    return this.#json({ method: "GET", path: "/v1/health", retry: true });
  }
  createVm(options: CreateVmOptions = {}): Promise<Vm> {
    const { cpu = 1, memMb = 256, snapshotId, secretEnv: secrets, ...rest } = options;
    const body = compact({ cpu, memMb, ...rest, secretEnv: secretEnv(secrets), userOverlaySnapshotId: snapshotId });
    return this.#json({ method: "POST", path: "/v1/vms", json: body });
  }
  listVms(): Promise<Vm[]> {
    return this.#json({ method: "GET", path: "/v1/vms", retry: true });
  }
  getVm(id: string): Promise<Vm> {
    return this.#json({ method: "GET", path: `/v1/vms/${enc(id)}`, retry: true });
  }
  startVm(id: string): Promise<void> {
    return this.#none({ method: "POST", path: `/v1/vms/${enc(id)}/start` });
  }
  stopVm(id: string): Promise<void> {
    return this.#none({ method: "POST", path: `/v1/vms/${enc(id)}/stop` });
  }
  deleteVm(id: string): Promise<void> {
    return this.#none({ method: "DELETE", path: `/v1/vms/${enc(id)}` });
  }
  logs(id: string, options: { type?: string; tail?: number } = {}): Promise<Record<string, unknown>> {
    return this.#json({ method: "GET", path: `/v1/vms/${enc(id)}/logs`, query: options, retry: true });
  }
  execLogs(id: string, options: { limit?: number } = {}): Promise<Record<string, unknown>> {
    return this.#json({ method: "GET", path: `/v1/vms/${enc(id)}/exec-logs`, query: options, retry: true });
  }

  // Exec and code
  exec(id: string, cmd: string, options: ExecOptions = {}): Promise<ExecResult> {
    const json = { cmd, ...options, execId: options.execId ?? crypto.randomUUID() };
    return this.#json({ method: "POST", path: `/v1/vms/${enc(id)}/exec`, json, retry: true });
  }
  /** The command's output as it comes: `for await (const e of client.execStream(id, cmd))`. */
  async *execStream(id: string, cmd: string, options: ExecOptions = {}): AsyncGenerator<ExecEvent> {
    const json = { cmd, ...options, execId: options.execId ?? crypto.randomUUID() };
    const resp = await this.#send({ method: "POST", path: `/v1/vms/${enc(id)}/exec`, json, accept: "application/x-ndjson" });
    const reader = resp.body!.pipeThrough(new TextDecoderStream()).getReader();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (value) buf += value;
      let nl: number;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, nl).trim();
        buf = buf.slice(nl + 1);
        if (line) yield JSON.parse(line) as ExecEvent;
      }
      if (done) break;
    }
  }
  #run<T>(route: string, id: string, code: string | undefined, options: RunOptions): Promise<RunResult<T>> {
    const json = compact({ code, ...options, execId: options.execId ?? crypto.randomUUID() });
    return this.#json({ method: "POST", path: `/v1/vms/${enc(id)}/${route}`, json, retry: true });
  }
  /** TypeScript under Deno; `result.set(value)` (or a context's last expression) is `result`. */
  runTs<T = unknown>(id: string, code?: string, options: RunOptions = {}): Promise<RunResult<T>> {
    return this.#run("run-ts", id, code, options);
  }
  runJs<T = unknown>(id: string, code?: string, options: RunOptions = {}): Promise<RunResult<T>> {
    return this.#run("run-js", id, code, options);
  }
  runPython<T = unknown>(id: string, code?: string, options: RunOptions = {}): Promise<RunResult<T>> {
    return this.#run("run-python", id, code, options);
  }

  // Code contexts
  createContext(
    id: string,
    language: Language,
    options: { cwd?: string; env?: Record<string, string>; idleTimeoutMs?: number; allowNet?: boolean } = {},
  ): Promise<ContextInfo> {
    return this.#json({ method: "POST", path: `/v1/vms/${enc(id)}/contexts`, json: { language, ...options } });
  }
  listContexts(id: string): Promise<ContextInfo[]> {
    return this.#json({ method: "GET", path: `/v1/vms/${enc(id)}/contexts`, retry: true });
  }
  getContext(id: string, contextId: string): Promise<ContextInfo> {
    return this.#json({ method: "GET", path: `/v1/vms/${enc(id)}/contexts/${enc(contextId)}`, retry: true });
  }
  restartContext(id: string, contextId: string): Promise<ContextInfo> {
    return this.#json({ method: "POST", path: `/v1/vms/${enc(id)}/contexts/${enc(contextId)}/restart` });
  }
  deleteContext(id: string, contextId: string): Promise<void> {
    return this.#none({ method: "DELETE", path: `/v1/vms/${enc(id)}/contexts/${enc(contextId)}` });
  }

  // Files
  /** Unpacks a tar.gz under `dest` in the workspace. */
  upload(id: string, archive: Uint8Array, dest = "/workspace"): Promise<void> {
    const path = `/v1/vms/${enc(id)}/files/upload`;
    return this.#none({ method: "POST", path, query: { dest }, body: archive, contentType: "application/gzip" });
  }
  /** `path` (a file or directory) as a tar.gz. */
  download(id: string, path: string): Promise<Uint8Array> {
    return this.#bytes({ method: "GET", path: `/v1/vms/${enc(id)}/files/download`, query: { path }, retry: true });
  }
  /** Writes one file at `path` in the workspace. */
  async writeFile(id: string, path: string, data: string | Uint8Array, mode = 0o644): Promise<void> {
    const cut = path.lastIndexOf("/");
    const bytes = typeof data === "string" ? new TextEncoder().encode(data) : data;
    const archive = await packTarGz([{ name: path.slice(cut + 1), data: bytes, mode }]);
    await this.upload(id, archive, cut > 0 ? path.slice(0, cut) : "/workspace");
  }
  /** The bytes of the file at `path`. */
  async readFile(id: string, path: string): Promise<Uint8Array> {
    const files = (await unpackTarGz(await this.download(id, path))).filter((e) => !e.dir);
    if (files.length !== 1) throw new Error(`expected one file at ${path}, found ${files.length}`);
    return files[0].data!;
  }
  /** Uploads the contents of the local directory `localDir` into `dest` (Node and Deno). */
  async uploadDir(id: string, localDir: string, dest = "/workspace"): Promise<void> {
    const { readdir, readFile, stat } = await import("node:fs/promises");
    const entries: TarEntry[] = [];
    const walk = async (dir: string, prefix: string) => {
      for (const item of (await readdir(dir, { withFileTypes: true })).sort((a, b) => a.name.localeCompare(b.name))) {
        const full = `${dir}/${item.name}`;
        const name = prefix ? `${prefix}/${item.name}` : item.name;
        if (item.isDirectory()) {
          entries.push({ name, dir: true, mode: (await stat(full)).mode & 0o777 });
          await walk(full, name);
        } else if (item.isFile()) {
          entries.push({ name, data: new Uint8Array(await readFile(full)), mode: (await stat(full)).mode & 0o777 });
        }
      }
    };
    await walk(localDir, "");
    await this.upload(id, await packTarGz(entries), dest);
  }
  /** Downloads `path` and unpacks it into the local directory `localDir` (Node and Deno). */
  async downloadDir(id: string, path: string, localDir: string): Promise<string[]> {
    const { mkdir, writeFile } = await import("node:fs/promises");
    const written: string[] = [];
    await mkdir(localDir, { recursive: true });
    for (const e of await unpackTarGz(await this.download(id, path))) {
      const target = `${localDir}/${e.name}`;
      if (e.dir) {
        await mkdir(target, { recursive: true });
      } else {
        await mkdir(target.slice(0, target.lastIndexOf("/")), { recursive: true });
        await writeFile(target, e.data!, { mode: e.mode });
        written.push(e.name);
      }
    }
    return written;
  }

  // Snapshots
  createSnapshot(id: string, options: { includeMemory?: boolean } = {}): Promise<Snapshot> {
    return this.#json({ method: "POST", path: `/v1/vms/${enc(id)}/snapshots`, json: options });
  }
  listSnapshots(scope?: "user" | "internal" | "all"): Promise<Snapshot[]> {
    return this.#json({ method: "GET", path: "/v1/snapshots", query: { scope }, retry: true });
  }
  getSnapshot(snapshotId: string): Promise<Snapshot> {
    return this.#json({ method: "GET", path: `/v1/snapshots/${enc(snapshotId)}`, retry: true });
  }
  deleteSnapshot(snapshotId: string): Promise<void> {
    return this.#none({ method: "DELETE", path: `/v1/snapshots/${enc(snapshotId)}` });
  }

  // Images
  listImages(): Promise<Image[]> {
    return this.#json({ method: "GET", path: "/v1/images", retry: true });
  }
  getImage(imageId: string): Promise<Image> {
    return this.#json({ method: "GET", path: `/v1/images/${enc(imageId)}`, retry: true });
  }
  createImage(name: string, description?: string): Promise<Image> {
    return this.#json({ method: "POST", path: "/v1/images", json: compact({ name, description }) });
  }
  deleteImage(imageId: string): Promise<void> {
    return this.#none({ method: "DELETE", path: `/v1/images/${enc(imageId)}` });
  }
  setDefaultImage(imageId: string): Promise<void> {
    return this.#none({ method: "POST", path: `/v1/images/${enc(imageId)}/set-default` });
  }
  #part(imageId: string, part: string, data: Uint8Array, contentType = "application/octet-stream"): Promise<Image> {
    return this.#json({ method: "PUT", path: `/v1/images/${enc(imageId)}/${part}`, body: data, contentType });
  }
  uploadKernel(imageId: string, data: Uint8Array): Promise<Image> {
    return this.#part(imageId, "kernel", data);
  }
  uploadRootfs(imageId: string, data: Uint8Array): Promise<Image> {
    return this.#part(imageId, "rootfs", data);
  }
  uploadInitrd(imageId: string, data: Uint8Array): Promise<Image> {
    return this.#part(imageId, "initrd", data);
  }
  /** A tar.gz of `rds image build`'s output. */
  uploadBundle(imageId: string, data: Uint8Array): Promise<Image> {
    return this.#part(imageId, "bundle", data, "application/gzip");
  }

  // Network, peers, secrets, pool
  updateNetwork(id: string, policy: { outboundInternet?: boolean; allowIps?: string[]; allowDomains?: string[] }): Promise<Vm> {
    return this.#json({ method: "PATCH", path: `/v1/vms/${enc(id)}/network`, json: policy });
  }
  listPeers(id: string): Promise<Array<Record<string, unknown>>> {
    return this.#json({ method: "GET", path: `/v1/vms/${enc(id)}/peers`, retry: true });
  }
  setPeerLink(id: string, alias: string, link: { vmId?: string; sourceMode?: string }): Promise<Record<string, unknown>> {
    return this.#json({ method: "PATCH", path: `/v1/vms/${enc(id)}/peers/${enc(alias)}`, json: link });
  }
  deletePeerLink(id: string, alias: string): Promise<void> {
    return this.#none({ method: "DELETE", path: `/v1/vms/${enc(id)}/peers/${enc(alias)}` });
  }
  syncPeers(id: string): Promise<Record<string, unknown>> {
    return this.#json({ method: "POST", path: `/v1/vms/${enc(id)}/peers/sync` });
  }
  peerCalls(options: { vmId?: string; limit?: number } = {}): Promise<Array<Record<string, unknown>>> {
    return this.#json({ method: "GET", path: "/v1/peer-calls", query: options, retry: true });
  }
  setSecrets(id: string, secrets: Record<string, string> | string[]): Promise<void> {
    return this.#none({ method: "PATCH", path: `/v1/vms/${enc(id)}/secrets`, json: { secretEnv: secretEnv(secrets) } });
  }
  /** A new API key; `key` holds it, shown this once. */
  createApiKey(name: string, options: { expiresInDays?: number } = {}): Promise<Record<string, unknown> & { id: string; key: string }> {
    return this.#json({ method: "POST", path: "/v1/api-keys", json: { name, ...options } });
  }
  listApiKeys(): Promise<Array<Record<string, unknown>>> {
    return this.#json({ method: "GET", path: "/v1/api-keys", retry: true });
  }
  revokeApiKey(keyId: string): Promise<void> {
    return this.#none({ method: "DELETE", path: `/v1/api-keys/${enc(keyId)}` });
  }
  pool(): Promise<Record<string, unknown>> {
    return this.#json({ method: "GET", path: "/v1/pool", retry: true });
  }

  // Terminals
  /** A single-use token for `GET /v1/vms/{id}/pty?token=` (browsers: no API key in a URL). */
  createPtyToken(id: string): Promise<PtyToken> {
    return this.#json({ method: "POST", path: `/v1/vms/${enc(id)}/pty-tokens` });
  }
  listPtySessions(id: string): Promise<Array<Record<string, unknown>>> {
    return this.#json({ method: "GET", path: `/v1/vms/${enc(id)}/pty-sessions`, retry: true });
  }
  killPtySession(id: string, sessionId: string): Promise<void> {
    return this.#none({ method: "DELETE", path: `/v1/vms/${enc(id)}/pty-sessions/${enc(sessionId)}` });
  }
  /** The WebSocket URL of a terminal, authenticated by a fresh single-use token (for the
   * platform's `WebSocket`, which cannot send `X-API-Key`). */
  async terminalUrl(id: string, options: { cols?: number; rows?: number; cmd?: string; session?: string } = {}): Promise<string> {
    const { token } = await this.createPtyToken(id);
    const query = new URLSearchParams(
      Object.entries({ ...options, token }).filter(([, v]) => v !== undefined).map(([k, v]) => [k, String(v)]),
    );
    return `${this.url.replace(/^http/, "ws")}/v1/vms/${enc(id)}/pty?${query}`;
  }
  /** The WebSocket URL of an exec with streamed stdin, authenticated by a single-use token. */
  async execSocketUrl(id: string): Promise<string> {
    const { token } = await this.createPtyToken(id);
    return `${this.url.replace(/^http/, "ws")}/v1/vms/${enc(id)}/exec/ws?token=${enc(token)}`;
  }
}

// ---- A VM as an object ----

const RUNS: Record<Language, "runPython" | "runTs" | "runJs"> = { python: "runPython", typescript: "runTs", javascript: "runJs" };

/** A VM: `await using vm = await Sandbox.create()` deletes it when the scope ends. */
export class Sandbox {
  constructor(
    readonly client: RdsClient,
    public vm: Vm,
  ) {}

  static async create(options: CreateVmOptions & { client?: RdsClient } = {}): Promise<Sandbox> {
    const { client = new RdsClient(), ...vm } = options;
    return new Sandbox(client, await client.createVm(vm));
  }
  static async connect(id: string, client = new RdsClient()): Promise<Sandbox> {
    return new Sandbox(client, await client.getVm(id));
  }

  get id(): string {
    return this.vm.id;
  }
  exec(cmd: string, options?: ExecOptions) {
    return this.client.exec(this.id, cmd, options);
  }
  execStream(cmd: string, options?: ExecOptions) {
    return this.client.execStream(this.id, cmd, options);
  }
  runTs<T = unknown>(code: string, options?: RunOptions) {
    return this.client.runTs<T>(this.id, code, options);
  }
  runJs<T = unknown>(code: string, options?: RunOptions) {
    return this.client.runJs<T>(this.id, code, options);
  }
  runPython<T = unknown>(code: string, options?: RunOptions) {
    return this.client.runPython<T>(this.id, code, options);
  }
  writeFile(path: string, data: string | Uint8Array, mode?: number) {
    return this.client.writeFile(this.id, path, data, mode);
  }
  readFile(path: string) {
    return this.client.readFile(this.id, path);
  }
  uploadDir(localDir: string, dest?: string) {
    return this.client.uploadDir(this.id, localDir, dest);
  }
  downloadDir(path: string, localDir: string) {
    return this.client.downloadDir(this.id, path, localDir);
  }
  snapshot(options?: { includeMemory?: boolean }) {
    return this.client.createSnapshot(this.id, options);
  }
  async refresh(): Promise<Vm> {
    return (this.vm = await this.client.getVm(this.id));
  }
  async start(): Promise<Vm> {
    await this.client.startVm(this.id);
    return this.refresh();
  }
  async stop(): Promise<Vm> {
    await this.client.stopVm(this.id);
    return this.refresh();
  }
  /** A code context: `await using ctx = await vm.context("python")`. */
  async context(language: Language | "ts" | "js" | "py", options?: Parameters<RdsClient["createContext"]>[2]): Promise<Context> {
    const lang = ({ ts: "typescript", js: "javascript", py: "python" } as const)[language as "ts"] ?? (language as Language);
    return new Context(this, await this.client.createContext(this.id, lang, options));
  }
  /** Deletes the VM. */
  kill(): Promise<void> {
    return this.client.deleteVm(this.id);
  }
  [Symbol.asyncDispose](): Promise<void> {
    return this.kill();
  }
}

/** A code context: top-level names defined by one run are there for the next. */
export class Context {
  constructor(
    readonly sandbox: Sandbox,
    public info: ContextInfo,
  ) {}
  get id(): string {
    return this.info.contextId;
  }
  run<T = unknown>(code: string, options: RunOptions = {}): Promise<RunResult<T>> {
    return this.sandbox.client[RUNS[this.info.language]]<T>(this.sandbox.id, code, { ...options, contextId: this.id });
  }
  async restart(): Promise<ContextInfo> {
    return (this.info = await this.sandbox.client.restartContext(this.sandbox.id, this.id));
  }
  delete(): Promise<void> {
    return this.sandbox.client.deleteContext(this.sandbox.id, this.id);
  }
  [Symbol.asyncDispose](): Promise<void> {
    return this.delete();
  }
}

/** Which method implements each operation of `/openapi.json`, and the ones deliberately left
 * out with why; the test suite holds both against the live spec. */
export const OPERATIONS: Record<string, keyof RdsClient> = {
  "GET /v1/health": "health",
  "POST /v1/vms": "createVm",
  "GET /v1/vms": "listVms",
  "GET /v1/vms/{id}": "getVm",
  "DELETE /v1/vms/{id}": "deleteVm",
  "POST /v1/vms/{id}/start": "startVm",
  "POST /v1/vms/{id}/stop": "stopVm",
  "GET /v1/vms/{id}/logs": "logs",
  "GET /v1/vms/{id}/exec-logs": "execLogs",
  "POST /v1/vms/{id}/exec": "exec",
  "POST /v1/vms/{id}/run-ts": "runTs",
  "POST /v1/vms/{id}/run-js": "runJs",
  "POST /v1/vms/{id}/run-python": "runPython",
  "POST /v1/vms/{id}/contexts": "createContext",
  "GET /v1/vms/{id}/contexts": "listContexts",
  "GET /v1/vms/{id}/contexts/{contextId}": "getContext",
  "DELETE /v1/vms/{id}/contexts/{contextId}": "deleteContext",
  "POST /v1/vms/{id}/contexts/{contextId}/restart": "restartContext",
  "POST /v1/vms/{id}/files/upload": "upload",
  "GET /v1/vms/{id}/files/download": "download",
  "POST /v1/vms/{id}/snapshots": "createSnapshot",
  "GET /v1/snapshots": "listSnapshots",
  "GET /v1/snapshots/{id}": "getSnapshot",
  "DELETE /v1/snapshots/{id}": "deleteSnapshot",
  "GET /v1/images": "listImages",
  "POST /v1/images": "createImage",
  "GET /v1/images/{id}": "getImage",
  "DELETE /v1/images/{id}": "deleteImage",
  "POST /v1/images/{id}/set-default": "setDefaultImage",
  "PUT /v1/images/{id}/kernel": "uploadKernel",
  "PUT /v1/images/{id}/rootfs": "uploadRootfs",
  "PUT /v1/images/{id}/initrd": "uploadInitrd",
  "PUT /v1/images/{id}/bundle": "uploadBundle",
  "PATCH /v1/vms/{id}/network": "updateNetwork",
  "GET /v1/vms/{id}/peers": "listPeers",
  "PATCH /v1/vms/{id}/peers/{alias}": "setPeerLink",
  "DELETE /v1/vms/{id}/peers/{alias}": "deletePeerLink",
  "POST /v1/vms/{id}/peers/sync": "syncPeers",
  "GET /v1/peer-calls": "peerCalls",
  "PATCH /v1/vms/{id}/secrets": "setSecrets",
  "GET /v1/pool": "pool",
  "POST /v1/api-keys": "createApiKey",
  "GET /v1/api-keys": "listApiKeys",
  "DELETE /v1/api-keys/{id}": "revokeApiKey",
  "POST /v1/vms/{id}/pty-tokens": "createPtyToken",
  "GET /v1/vms/{id}/pty-sessions": "listPtySessions",
  "DELETE /v1/vms/{id}/pty-sessions/{sessionId}": "killPtySession",
  "GET /v1/vms/{id}/pty": "terminalUrl",
  "GET /v1/vms/{id}/exec/ws": "execSocketUrl",
};
export const MISSING: Record<string, string> = {};
