// tar.gz for the file routes, with web streams only (CompressionStream), so it runs unchanged on
// Node 20 and Deno: packing entries, and reading a download's regular files and directories.

/** One entry of an archive: a file (with `data`) or a directory. */
export interface TarEntry {
  name: string;
  data?: Uint8Array;
  mode?: number;
  dir?: boolean;
}

const BLOCK = 512;
const encoder = new TextEncoder();
const decoder = new TextDecoder();

function octal(value: number, width: number): string {
  return value.toString(8).padStart(width - 1, "0") + "\0";
}

function header(name: string, size: number, mode: number, type: string): Uint8Array {
  const h = new Uint8Array(BLOCK);
  const put = (text: string, at: number) => h.set(encoder.encode(text), at);
  put(name, 0);
  put(octal(mode, 8), 100);
  put(octal(0, 8), 108);
  put(octal(0, 8), 116);
  put(octal(size, 12), 124);
  put(octal(Math.floor(Date.now() / 1000), 12), 136);
  put("        ", 148);
  put(type, 156);
  put("ustar\u000000", 257);
  let sum = 0;
  for (const b of h) sum += b;
  put(octal(sum, 7) + " ", 148);
  return h;
}

async function through(data: Uint8Array, stream: CompressionStream | DecompressionStream): Promise<Uint8Array> {
  const out = new Response(new Blob([data]).stream().pipeThrough(stream));
  return new Uint8Array(await out.arrayBuffer());
}

/** The entries as a tar.gz (names over 100 bytes travel as GNU long names). */
export async function packTarGz(entries: TarEntry[]): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  for (const e of entries) {
    const name = e.dir && !e.name.endsWith("/") ? `${e.name}/` : e.name;
    const bytes = encoder.encode(name);
    if (bytes.length > 100) {
      parts.push(header("././@LongLink", bytes.length + 1, 0o644, "L"));
      parts.push(padded(new Uint8Array([...bytes, 0])));
    }
    const data = e.dir ? new Uint8Array() : e.data ?? new Uint8Array();
    parts.push(header(decoder.decode(bytes.slice(0, 100)), data.length, e.mode ?? (e.dir ? 0o755 : 0o644), e.dir ? "5" : "0"));
    parts.push(padded(data));
  }
  parts.push(new Uint8Array(BLOCK * 2));
  return through(concat(parts), new CompressionStream("gzip"));
}

function padded(data: Uint8Array): Uint8Array {
  const size = Math.ceil(data.length / BLOCK) * BLOCK;
  const out = new Uint8Array(size);
  out.set(data);
  return out;
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

function text(h: Uint8Array, at: number, len: number): string {
  const field = h.subarray(at, at + len);
  const end = field.indexOf(0);
  return decoder.decode(end < 0 ? field : field.subarray(0, end));
}

/** The regular files and directories of a tar.gz; links, devices and names that climb out
 * (`..`, absolute) are dropped. */
export async function unpackTarGz(archive: Uint8Array): Promise<TarEntry[]> {
  const tar = await through(archive, new DecompressionStream("gzip"));
  const out: TarEntry[] = [];
  let longName: string | undefined;
  for (let at = 0; at + BLOCK <= tar.length; ) {
    const h = tar.subarray(at, at + BLOCK);
    if (h.every((b) => b === 0)) break;
    const size = parseInt(text(h, 124, 12).trim() || "0", 8);
    const type = String.fromCharCode(h[156] || 48);
    const body = tar.subarray(at + BLOCK, at + BLOCK + size);
    at += BLOCK + Math.ceil(size / BLOCK) * BLOCK;
    if (type === "L") {
      longName = text(body, 0, body.length);
      continue;
    }
    if (type === "x") {
      const path = decoder.decode(body).split("\n").map((r) => r.match(/^\d+ path=(.*)$/)).find((m) => m);
      if (path) longName = path[1];
      continue;
    }
    const prefix = text(h, 345, 155);
    const name = longName ?? (prefix ? `${prefix}/${text(h, 0, 100)}` : text(h, 0, 100));
    longName = undefined;
    const clean = name.replace(/^\/+/, "").replace(/^\.\//, "").replace(/\/+$/, "");
    if (!clean || clean === "." || clean.split("/").includes("..")) continue;
    const mode = parseInt(text(h, 100, 8).trim() || "644", 8) & 0o777;
    if (type === "5") out.push({ name: clean, dir: true, mode });
    else if (type === "0" || type === "\0" || type === "7") out.push({ name: clean, data: body.slice(), mode });
  }
  return out;
}
