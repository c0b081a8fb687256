# rds run-python wrapper. It starts knowing nothing of the run: it reads the run (one JSON
# document: target, result FIFO, cwd, env, args) from stdin until EOF — at once for a cold run,
# when handed the run for a pre-started interpreter — then runs the target file as __main__,
# collects its result and writes it, newline-terminated, to the result FIFO.
import json
import os
import runpy
import sys
import traceback


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
    """The traceback without the wrapper's and runpy's own leading frames."""
    tb = exc.__traceback__
    while tb is not None and (tb.tb_frame.f_code.co_filename in (__file__, "<frozen runpy>")
                              or tb.tb_frame.f_code.co_filename.endswith("runpy.py")):
        tb = tb.tb_next
    return tb if tb is not None else exc.__traceback__


def _describe(exc):
    stack = "".join(traceback.format_exception(type(exc), exc, _user_traceback(exc)))
    return {"name": type(exc).__name__, "message": str(exc), "stack": stack}


def _report(run, helper, module_globals):
    payload = {}
    has_value, value = helper.has_value, helper.value
    if module_globals is not None and "result" in module_globals and module_globals["result"] is not helper:
        # The module rebound the name `result`: its value is the result.
        has_value, value = True, module_globals["result"]
    if has_value:
        try:
            payload["result"] = json.loads(json.dumps(value, ensure_ascii=False, allow_nan=False))
        except (TypeError, ValueError) as exc:
            helper.error({"name": "TypeError", "message": "result is not JSON-serialisable: %s" % exc})
    if helper.has_error:
        payload["error"] = helper.error_value
    try:
        data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        data = json.dumps({"error": {"name": "TypeError", "message": str(exc)}}).encode("utf-8")
    # JSON without indent has no raw newline: the terminator marks the report complete.
    with open(run["result"], "wb") as fifo:
        fifo.write(data + b"\n")
    return 1 if helper.has_error else 0


def _read_run():
    """The run, read to EOF (the agent writes it and closes the pipe); stdin is then /dev/null."""
    data = sys.stdin.buffer.read()
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    return json.loads(data)


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


def _main():
    run = _read_run()
    if run.get("warm"):
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
        module_globals = runpy.run_path(run["target"], init_globals={"result": helper}, run_name="__main__")
    except SystemExit as exc:
        exit_request = exc
    except BaseException as exc:  # noqa: BLE001 - every failure of user code is reported
        traceback.print_exception(type(exc), exc, _user_traceback(exc))
        helper.error(exc)
    status = _report(run, helper, module_globals)
    sys.stdout.flush()
    if exit_request is not None:
        raise exit_request
    sys.exit(status)


_main()
