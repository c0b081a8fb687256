// rds run-ts / run-js wrapper (runs under Deno and Node): imports the target module, collects its
// result and reports it as one JSON document on the result FIFO the agent reads.
// The agent substitutes the three __RDS_*__ placeholders with JSON string literals.
import { closeSync, openSync, writeSync } from "node:fs";
import { createRequire } from "node:module";
import process from "node:process";
import { pathToFileURL } from "node:url";

const TARGET = __RDS_TARGET__;
const RESULT_FIFO = __RDS_RESULT__;
const WORKSPACE = __RDS_WORKSPACE__;

const outcome = { hasResult: false, result: undefined, hasError: false, error: undefined };

function describeError(err) {
  if (err instanceof Error) {
    const described = { name: err.name, message: err.message };
    if (typeof err.stack === "string") described.stack = err.stack;
    return described;
  }
  if (typeof err === "string") return { name: "Error", message: err };
  if (err !== null && typeof err === "object") return err;
  return { name: "Error", message: String(err) };
}

// JSON.stringify that survives cycles and BigInt: `this` is the holder, so the stack keeps only
// the ancestors of the value being visited (shared, non-cyclic references stay intact).
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
if (typeof globalThis.require === "undefined") {
  // Snippets live outside the workspace; let them require packages installed in it.
  globalThis.require = createRequire(WORKSPACE + "/");
}

let reported = false;
function report() {
  if (reported) return;
  reported = true;
  const payload = {};
  if (outcome.hasResult && outcome.result !== undefined) {
    try {
      const text = stringify(outcome.result);
      if (text !== undefined) payload.result = JSON.parse(text);
    } catch (err) {
      outcome.hasError = true;
      outcome.error = { name: "TypeError", message: `result is not JSON-serialisable: ${err}` };
    }
  }
  if (outcome.hasError) payload.error = outcome.error;
  const bytes = new TextEncoder().encode(stringify(payload));
  const fd = openSync(RESULT_FIFO, "w");
  let written = 0;
  while (written < bytes.length) written += writeSync(fd, bytes, written);
  closeSync(fd);
}
// Also runs when user code calls process.exit(), so a result set before that is kept.
process.on("exit", () => {
  try {
    report();
  } catch {
    // Nothing useful left to do while exiting.
  }
});

try {
  const mod = await import(pathToFileURL(TARGET).href);
  if (!outcome.hasResult && !outcome.hasError && mod && "default" in mod) {
    const value = await mod.default;
    // A default-exported function is not called: it is simply not a result.
    if (typeof value !== "function" && value !== undefined) {
      outcome.hasResult = true;
      outcome.result = value;
    }
  }
} catch (err) {
  outcome.hasError = true;
  outcome.error = describeError(err);
  console.error(err instanceof Error && err.stack ? err.stack : String(err));
}
if (outcome.hasError && !process.exitCode) process.exitCode = 1;
