# rds run-python wrapper. It starts knowing nothing of the run: it reads the run from stdin until
# EOF — at once for a cold run, when handed the run for a pre-started interpreter — then runs the
# target file as __main__, collects its result and writes it, newline-terminated, to the result
# FIFO. The run is NUL-separated: "1", warm ("0"/"1"), target, result FIFO, cwd, the number of
# args, the args, then (warm only) the environment as KEY=VALUE.
# Only modules start-up has loaded already are imported up front: json (through re), runpy (through
# pkgutil and typing) and traceback would cost more than the interpreter's own start.
import gc
import os
import sys


class _Result:
    """`result.set(value)` / `result.error(err)`, as in run-ts and run-js."""

    def __init__(self):
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


def _user_traceback(exc):
    """The traceback without the wrapper's own leading frames."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    return tb if tb is not None else exc.__traceback__


def _describe(exc):
    import traceback

    stack = "".join(traceback.format_exception(type(exc), exc, _user_traceback(exc)))
    return {"name": type(exc).__name__, "message": str(exc), "stack": stack}


def _dumps(value):
    """json.dumps(value, ensure_ascii=False, allow_nan=False) through the C encoder json uses,
    without importing json."""
    try:
        from _json import encode_basestring, make_encoder
    except ImportError:  # not CPython
        import json

        return json.dumps(value, ensure_ascii=False, allow_nan=False)

    def default(o):
        raise TypeError("Object of type %s is not JSON serializable" % type(o).__name__)

    return "".join(make_encoder({}, default, encode_basestring, None, ":", ",", False, False, False)(value, 0))


def _report(run, helper, module_globals):
    fields = []
    has_value, value = helper.has_value, helper.value
    if module_globals is not None and "result" in module_globals and module_globals["result"] is not helper:
        # The module rebound the name `result`: its value is the result.
        has_value, value = True, module_globals["result"]
    if has_value:
        try:
            fields.append('"result":' + _dumps(value))
        except (TypeError, ValueError, RecursionError) as exc:
            helper.error({"name": "TypeError", "message": "result is not JSON-serialisable: %s" % exc})
    if helper.has_error:
        try:
            fields.append('"error":' + _dumps(helper.error_value))
        except (TypeError, ValueError, RecursionError) as exc:
            fields.append('"error":' + _dumps({"name": "TypeError", "message": str(exc)}))
    try:
        data = ("{" + ",".join(fields) + "}").encode("utf-8")
    except UnicodeEncodeError as exc:
        data = ('{"error":' + _dumps({"name": "TypeError", "message": str(exc)}) + "}").encode("utf-8")
    # JSON has no raw newline: the terminator marks the report complete.
    with open(run["result"], "wb") as fifo:
        fifo.write(data + b"\n")
    return 1 if helper.has_error else 0


def _read_run():
    """The run, read to EOF (the agent writes it and closes the pipe); stdin is then /dev/null."""
    data = sys.stdin.buffer.read()
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    fields = data.decode("utf-8", "surrogateescape").split("\0")
    count = int(fields[5])
    return {
        "warm": fields[1] == "1",
        "target": fields[2],
        "result": fields[3],
        "cwd": fields[4],
        "args": fields[6:6 + count],
        "env": dict(entry.split("=", 1) for entry in fields[6 + count:]),
    }


def _add_user_site():
    """The user's site-packages, when it appeared after start-up (`pip install --user` since),
    where start-up would have put it: before the system's."""
    import site

    user_site = site.getusersitepackages()
    if not site.ENABLE_USER_SITE or user_site in sys.path or not os.path.isdir(user_site):
        return
    before = len(sys.path)
    site.addsitedir(user_site)
    added = sys.path[before:]
    del sys.path[before:]
    system = site.getsitepackages()
    at = next((i for i, entry in enumerate(sys.path) if entry in system), len(sys.path))
    sys.path[at:at] = added


def _run_main(target, helper):
    """Runs `target` as __main__ (what runpy.run_path does for a source file); its globals."""
    import builtins

    main = type(sys)("__main__")
    main.__dict__.update(
        __file__=target, __cached__=None, __loader__=None, __package__="", __spec__=None,
        __builtins__=builtins, result=helper,
    )
    sys.modules["__main__"] = main
    with open(target, "rb") as source:
        code = compile(source.read(), target, "exec")
    exec(code, main.__dict__)
    return main.__dict__


def _main():
    # What start-up and the wrapper made is never garbage: kept out of the collector, the
    # interpreter's exit is ~2x faster (no final collection walks it).
    gc.freeze()
    run = _read_run()
    if run["warm"]:
        # A pre-started interpreter takes the run's environment and directory now (a cold one
        # was started with them).
        os.environ.clear()
        os.environ.update(run["env"])
        os.chdir(run["cwd"])
        _add_user_site()
    helper = _Result()
    sys.argv = [run["target"]] + run["args"]
    sys.path[0] = run["cwd"]
    module_globals = None
    exit_request = None
    try:
        module_globals = _run_main(run["target"], helper)
    except SystemExit as exc:
        exit_request = exc
    except BaseException as exc:  # noqa: BLE001 - every failure of user code is reported
        helper.error(exc)
        sys.stderr.write(helper.error_value["stack"])
    status = _report(run, helper, module_globals)
    sys.stdout.flush()
    if exit_request is not None:
        raise exit_request
    sys.exit(status)


_main()
