// rds code-context kernel for TypeScript (Deno) and JavaScript (Node). One kernel is one context:
// it evaluates run after run in the same global scope, so top-level variables, functions and
// imports of one run are visible to the next (V8's REPL mode, through the inspector, the way
// Deno's and Chrome's consoles evaluate: `let`/`const` may be redeclared, top-level `await` works).
//
// Protocol: the agent writes each run to stdin as a header line "<seq> <bytes>\n" followed by the
// code (UTF-8); the kernel answers on the result FIFO (argv: fifo, language, cwd) with one
// newline-terminated JSON document per run: {"seq", "result"?, "error"?}. The result is what
// `result.set(...)` got, else the value of the run's last expression.

import { Session } from "node:inspector";

const deno = globalThis.Deno;
const nodeFs = deno ? null : await import("node:fs");
const args = deno ? deno.args : process.argv.slice(2);
const [resultPath, language, cwd] = args;
const typescript = language === "ts";
const strip = typescript ? (await import("node:module")).stripTypeScriptTypes : null;

// A promise user code left to fail, or an exception thrown from a timer, is reported on stderr;
// the context lives on.
if (deno) {
  globalThis.addEventListener("unhandledrejection", (event) => {
    event.preventDefault();
    console.error("Uncaught (in promise)", event.reason);
  });
  globalThis.addEventListener("error", (event) => {
    event.preventDefault();
    console.error("Uncaught", event.error);
  });
} else {
  process.on("unhandledRejection", (reason) => console.error("Uncaught (in promise)", reason));
  process.on("uncaughtException", (err) => console.error("Uncaught", err));
}

const session = new Session();
session.connect();
const post = (method, params) =>
  new Promise((resolve, reject) => session.post(method, params, (err, res) => (err ? reject(err) : resolve(res))));

// Values leave the inspector through this holder (the inspector hands back remote objects).
const holder = { value: undefined };
Object.defineProperty(globalThis, "__rdsHolder", { value: holder });
// Imports of user code, resolved against the context's directory (Node's inspector evaluations
// have no import callback of their own; Deno's would resolve against this file).
const base = new URL("file://" + cwd.split("/").map(encodeURIComponent).join("/") + "/");
Object.defineProperty(globalThis, "__rdsImport", {
  value: (specifier) =>
    import(/^\.{0,2}\//.test(specifier) ? new URL(specifier, base).href : specifier),
});

const outcome = { hasResult: false, result: undefined, hasError: false, error: undefined };
globalThis.result = Object.freeze({
  set(value) {
    outcome.hasResult = true;
    outcome.result = value;
  },
  error(err) {
    outcome.hasError = true;
    outcome.error = describeError(err);
  },
});

// The stack down to the user's frames: the kernel's own (and the inspector's) are cut off.
function userStack(stack) {
  const lines = stack.split("\n");
  const end = lines.findIndex((line) => line.includes("Session.post") || line.includes(import.meta.url));
  return (end < 0 ? lines : lines.slice(0, end)).join("\n");
}

function describeError(err) {
  if (err instanceof Error) {
    const described = { name: err.name, message: err.message };
    if (typeof err.stack === "string") described.stack = userStack(err.stack);
    return described;
  }
  if (typeof err === "string") return { name: "Error", message: err };
  if (err !== null && typeof err === "object") return err;
  return { name: "Error", message: String(err) };
}

// JSON.stringify that survives cycles and BigInt (as the run wrapper's).
function stringify(value) {
  const ancestors = [];
  return JSON.stringify(value, function (_key, v) {
    if (typeof v === "bigint") return v.toString();
    if (v !== null && typeof v === "object") {
      while (ancestors.length > 0 && ancestors[ancestors.length - 1] !== this) ancestors.pop();
      if (ancestors.includes(v)) return "[Circular]";
      ancestors.push(v);
    }
    return v;
  });
}

// The JavaScript value a remote object stands for.
async function valueOf(remote) {
  if (remote.objectId) {
    await post("Runtime.callFunctionOn", {
      objectId: remote.objectId,
      functionDeclaration: "function () { globalThis.__rdsHolder.value = this; }",
    });
    const value = holder.value;
    holder.value = undefined;
    return value;
  }
  if ("unserializableValue" in remote) {
    const text = remote.unserializableValue;
    return remote.type === "bigint" ? BigInt(text.slice(0, -1)) : Number(text);
  }
  return remote.value;
}

// Static imports become calls of `__rdsImport` (REPL mode has no import statements), each on its
// own line so line numbers stay the user's; `import(` calls go the same way.
function rewriteImports(code) {
  const statement = /^([ \t]*)import\s+(?:(type\s+)?([\s\S]*?)\s+from\s+)?(["'][^"'\n]+["'])[ \t]*;?/gm;
  return code
    .replace(statement, (all, indent, typeOnly, clause, specifier) => {
      const lines = "\n".repeat((all.match(/\n/g) ?? []).length);
      if (typeOnly) return indent + lines;
      const load = `await __rdsImport(${specifier})`;
      if (!clause) return `${indent}${load};${lines}`;
      const parts = [];
      const namespace = clause.match(/\*\s+as\s+([\w$]+)/);
      const named = clause.match(/\{([\s\S]*)\}/);
      const fallback = clause.replace(/\{[\s\S]*\}/, "").replace(/\*\s+as\s+[\w$]+/, "").replace(/,/g, "").trim();
      if (fallback) parts.push(`default: ${fallback}`);
      if (named) {
        for (const entry of named[1].split(",").map((e) => e.trim()).filter(Boolean)) {
          if (entry.startsWith("type ")) continue;
          const [name, alias] = entry.split(/\s+as\s+/);
          parts.push(alias ? `${name.trim()}: ${alias.trim()}` : name.trim());
        }
      }
      const bindings = [];
      if (namespace) bindings.push(`const ${namespace[1]} = ${load};`);
      if (parts.length) bindings.push(`const { ${parts.join(", ")} } = ${namespace ? namespace[1] : load};`);
      return indent + bindings.join(" ") + lines;
    })
    .replace(/(^|[^\w$.])import\s*\(/g, "$1__rdsImport(");
}

async function evaluate(seq, source) {
  let code = source;
  if (typescript) {
    try {
      code = strip(code, { mode: "strip" });
    } catch {
      // Enums, namespaces and parameter properties need rewriting, not only erasing.
      code = strip(code, { mode: "transform" });
    }
  }
  code = rewriteImports(code) + `\n//# sourceURL=run-${seq}.${typescript ? "ts" : "js"}`;
  const answer = await post("Runtime.evaluate", {
    expression: code,
    replMode: true,
    awaitPromise: true,
    objectGroup: "run",
  });
  try {
    if (answer.exceptionDetails) {
      const exception = answer.exceptionDetails.exception;
      throw exception ? await valueOf(exception) : new Error(answer.exceptionDetails.text);
    }
    let value = await valueOf(answer.result);
    if (value !== null && typeof value?.then === "function") value = await value;
    return value;
  } finally {
    await post("Runtime.releaseObjectGroup", { objectGroup: "run" });
  }
}

const encoder = new TextEncoder();
const reporter = deno ? deno.openSync(resultPath, { write: true }) : nodeFs.openSync(resultPath, "w");
function report(doc) {
  const bytes = encoder.encode(doc + "\n");
  let written = 0;
  while (written < bytes.length) {
    written += deno ? reporter.writeSync(bytes.subarray(written)) : nodeFs.writeSync(reporter, bytes, written);
  }
}

async function runOne(seq, code) {
  outcome.hasResult = false;
  outcome.result = undefined;
  outcome.hasError = false;
  outcome.error = undefined;
  try {
    const value = await evaluate(seq, code);
    if (!outcome.hasResult && !outcome.hasError && value !== undefined && typeof value !== "function") {
      outcome.hasResult = true;
      outcome.result = value;
    }
  } catch (err) {
    outcome.hasError = true;
    outcome.error = describeError(err);
    console.error(err instanceof Error && err.stack ? userStack(err.stack) : String(err));
  }
  const payload = { seq };
  if (outcome.hasResult && outcome.result !== undefined) {
    try {
      const text = stringify(outcome.result);
      if (text !== undefined) payload.result = JSON.parse(text);
    } catch (err) {
      payload.error = { name: "TypeError", message: `result is not JSON-serialisable: ${err}` };
    }
  }
  if (outcome.hasError) payload.error = outcome.error;
  report(stringify(payload));
}

// Reads stdin in chunks and hands out header lines and exact byte counts.
const reader = (() => {
  let buffered = new Uint8Array(0);
  const stream = deno ? deno.stdin.readable : process.stdin;
  const iterator = stream[Symbol.asyncIterator]();
  async function more() {
    const next = await iterator.next();
    if (next.done) return false;
    const chunk = next.value instanceof Uint8Array ? next.value : new Uint8Array(next.value);
    const joined = new Uint8Array(buffered.length + chunk.length);
    joined.set(buffered);
    joined.set(chunk, buffered.length);
    buffered = joined;
    return true;
  }
  return {
    async line() {
      for (;;) {
        const at = buffered.indexOf(10);
        if (at >= 0) {
          const text = new TextDecoder().decode(buffered.subarray(0, at));
          buffered = buffered.subarray(at + 1);
          return text;
        }
        if (!(await more())) return null;
      }
    },
    async exactly(n) {
      while (buffered.length < n) if (!(await more())) return null;
      const bytes = buffered.subarray(0, n);
      buffered = buffered.subarray(n);
      return new TextDecoder().decode(bytes);
    },
  };
})();

for (;;) {
  const header = await reader.line();
  if (header === null) break;
  const [seq, size] = header.split(" ").map(Number);
  const code = await reader.exactly(size);
  if (code === null) break;
  await runOne(seq, code);
}
if (deno) deno.exit(0);
else process.exit(0);
