// rds run-ts / run-js wrapper (runs under Deno and Node). It starts knowing nothing of the run: it
// reads the run from stdin until EOF — at once for a cold run, when handed the run for a
// pre-started interpreter — then imports the target module, collects its result and writes it,
// newline-terminated, to the result FIFO. The run is NUL-separated: "1", warm ("0"/"1"), target,
// result FIFO, cwd, the number of args, the args, then (warm only) the environment as KEY=VALUE.
// Under Deno only the Deno namespace is used: touching `process` or a `node:` module costs ~30 ms.

const deno = globalThis.Deno;
const nodeFs = deno ? null : await import("node:fs");
const nodeModule = deno ? null : await import("node:module");

const outcome = { hasResult: false, result: undefined, hasError: false, error: undefined };

// The stack without the wrapper's frames and the module loader's below them: only the user's.
function userStack(stack) {
  return stack
    .split("\n")
    .filter((line) => !line.includes(import.meta.url) && !/\(?node:internal\/modules\//.test(line))
    .join("\n");
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

// The run, read to EOF: the agent writes it and closes the pipe. `env`, `cwd` and `args` are
// applied only by a pre-started (`warm`) interpreter.
function readRun() {
  const chunks = [];
  let size = 0;
  const buf = new Uint8Array(64 * 1024);
  for (;;) {
    const n = deno ? deno.stdin.readSync(buf) : nodeFs.readSync(0, buf);
    if (n === null || n === 0) break;
    chunks.push(buf.slice(0, n));
    size += n;
  }
  const all = new Uint8Array(size);
  let at = 0;
  for (const chunk of chunks) {
    all.set(chunk, at);
    at += chunk.length;
  }
  const fields = new TextDecoder().decode(all).split("\0");
  const count = Number(fields[5]);
  const env = {};
  for (const entry of fields.slice(6 + count)) {
    const eq = entry.indexOf("=");
    env[entry.slice(0, eq)] = entry.slice(eq + 1);
  }
  return {
    warm: fields[1] === "1",
    target: fields[2],
    result: fields[3],
    cwd: fields[4],
    args: fields.slice(6, 6 + count),
    env,
  };
}

const run = readRun();

// A pre-started interpreter takes the run's environment, directory and arguments now (a cold one
// was started with them).
if (!run.warm) {
  // Nothing to apply.
} else if (deno) {
  const current = deno.env.toObject();
  for (const key of Object.keys(current)) if (!(key in run.env)) deno.env.delete(key);
  for (const [key, value] of Object.entries(run.env)) if (current[key] !== value) deno.env.set(key, value);
  deno.chdir(run.cwd);
  Object.defineProperty(deno, "args", { value: Object.freeze([...run.args]), configurable: true, enumerable: true });
} else {
  for (const key of Object.keys(process.env)) if (!(key in run.env)) delete process.env[key];
  Object.assign(process.env, run.env);
  process.chdir(run.cwd);
  process.argv.splice(2, process.argv.length - 2, ...run.args);
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
  // Snippets live outside the workspace; let them require packages installed in it. Under Deno
  // `node:module` loads only if the code uses `require`.
  const base = run.cwd + "/";
  const make = () => (deno ? globalThis.process.getBuiltinModule("node:module") : nodeModule).createRequire(base);
  Object.defineProperty(globalThis, "require", {
    configurable: true,
    get() {
      const require = make();
      Object.defineProperty(globalThis, "require", { value: require, writable: true, configurable: true });
      return require;
    },
    set(value) {
      Object.defineProperty(globalThis, "require", { value, writable: true, configurable: true });
    },
  });
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
  // JSON has no raw newline: the terminator marks the report complete.
  const bytes = new TextEncoder().encode(stringify(payload) + "\n");
  if (deno) {
    const fifo = deno.openSync(run.result, { write: true });
    let written = 0;
    while (written < bytes.length) written += fifo.writeSync(bytes.subarray(written));
    fifo.close();
  } else {
    const fd = nodeFs.openSync(run.result, "w");
    let written = 0;
    while (written < bytes.length) written += nodeFs.writeSync(fd, bytes, written);
    nodeFs.closeSync(fd);
  }
}
function reportOnExit() {
  try {
    report();
  } catch {
    // Nothing useful left to do while exiting.
  }
}
// Also runs when user code exits early (Deno.exit, process.exit), so a result set before is kept.
if (deno) globalThis.addEventListener("unload", reportOnExit);
else process.on("exit", reportOnExit);

try {
  const mod = await import(new URL("file://" + run.target.split("/").map(encodeURIComponent).join("/")).href);
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
  console.error(err instanceof Error && err.stack ? userStack(err.stack) : String(err));
}
if (outcome.hasError) {
  if (deno) {
    if (!deno.exitCode) deno.exitCode = 1;
  } else if (!process.exitCode) {
    process.exitCode = 1;
  }
}
