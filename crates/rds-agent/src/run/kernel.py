# rds code-context kernel for Python. One kernel is one context: it executes run after run in the
# same `__main__` namespace, so variables, imports and functions of one run are visible to the next.
#
# Protocol: the agent writes each run to stdin as a header line "<seq> <bytes>\n" followed by the
# code (UTF-8); the kernel answers on the result FIFO (argv[1]) with one newline-terminated JSON
# document per run: {"seq", "result"?, "error"?}. The result is what `result.set(...)` got, else
# the value of the run's last expression (JSON if it is JSON-serialisable, else its repr()).
# SIGINT interrupts the current run (the agent sends it when the run's timeout is reached) and
# leaves the namespace as it was at that point; between runs it is ignored.
import ast
import builtins
import json
import linecache
import os
import signal
import sys
import traceback


class _Result:
    """`result.set(value)` / `result.error(err)`, as in run-ts and run-js."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.has_value = False
        self.value = None
        self.has_error = False
        self.error_value = None

    def set(self, value):
        self.has_value = True
        self.value = value

    def error(self, err):
        self.has_error = True
        self.error_value = _describe(err) if isinstance(err, BaseException) else err


def _describe(exc):
    """Name, message and the stack of the user's frames only (their line numbers are the run's)."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename != __file__]
    stack = "Traceback (most recent call last):\n" if frames else ""
    stack += "".join(traceback.format_list(frames)) + "".join(traceback.format_exception_only(type(exc), exc))
    return {"name": type(exc).__name__, "message": str(exc), "stack": stack}


_running = False


def _interrupt(signum, frame):
    if _running:
        raise KeyboardInterrupt("the run's timeout was reached")


def _execute(seq, code, namespace):
    """Runs `code` in `namespace`; the value of its last expression, if it ends with one."""
    filename = "run-%d.py" % seq
    # Tracebacks show the run's own lines.
    linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
    tree = ast.parse(code, filename, "exec")
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(tree.body.pop().value)
    exec(compile(tree, filename, "exec"), namespace)
    if last is None:
        return None
    return eval(compile(last, filename, "eval"), namespace)


def _document(seq, helper, value):
    fields = {"seq": seq}
    if helper.has_value:
        try:
            fields["result"] = json.loads(json.dumps(helper.value, ensure_ascii=False, allow_nan=False))
        except (TypeError, ValueError, RecursionError) as exc:
            helper.error({"name": "TypeError", "message": "result is not JSON-serialisable: %s" % exc})
    elif value is not None and value is not helper:
        try:
            fields["result"] = json.loads(json.dumps(value, ensure_ascii=False, allow_nan=False))
        except (TypeError, ValueError, RecursionError):
            fields["result"] = repr(value)
    if helper.has_error:
        fields["error"] = helper.error_value
    try:
        return json.dumps(fields, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError) as exc:
        return json.dumps({"seq": seq, "error": {"name": "TypeError", "message": str(exc)}})


def _main():
    global _running
    result_path = sys.argv[1]
    # The runs arrive on a private copy of stdin; user code gets /dev/null.
    control = os.fdopen(os.dup(0), "rb")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    report = open(result_path, "wb", buffering=0)

    helper = _Result()
    main = type(sys)("__main__")
    main.__dict__.update(__builtins__=builtins, __file__=None, result=helper)
    sys.modules["__main__"] = main
    sys.argv = [""]
    sys.path[0] = os.getcwd()
    signal.signal(signal.SIGINT, _interrupt)
    while True:
        header = control.readline()
        if not header.endswith(b"\n"):
            return
        seq, size = (int(part) for part in header.split())
        code = control.read(size)
        if len(code) < size:
            return
        helper.reset()
        value = None
        _running = True
        try:
            value = _execute(seq, code.decode("utf-8", "surrogateescape"), main.__dict__)
        except BaseException as exc:  # noqa: BLE001 - every failure of user code is reported
            _running = False
            helper.error(exc)
            sys.stderr.write(helper.error_value["stack"])
        finally:
            _running = False
        # A rebound `result` is the result, as in run-python.
        rebound = main.__dict__.get("result", helper)
        if rebound is not helper:
            helper.set(rebound)
        main.__dict__["result"] = helper
        sys.stdout.flush()
        sys.stderr.flush()
        report.write(_document(seq, helper, value).encode("utf-8", "surrogateescape") + b"\n")


_main()
