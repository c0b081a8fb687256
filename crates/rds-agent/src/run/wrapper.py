# rds run-python wrapper: runs the target file as __main__, collects its result and reports it as
# one JSON document on the result FIFO the agent reads.
# The agent substitutes the three __RDS_*__ placeholders with JSON string literals.
import json
import runpy
import sys
import traceback

TARGET = __RDS_TARGET__
RESULT_FIFO = __RDS_RESULT__
SEARCH_DIR = __RDS_WORKSPACE__


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


def _report(helper, module_globals):
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
    with open(RESULT_FIFO, "wb") as fifo:
        fifo.write(data)
    return 1 if helper.has_error else 0


def _main():
    helper = _Result()
    sys.argv = [TARGET] + sys.argv[1:]
    sys.path[0] = SEARCH_DIR
    module_globals = None
    exit_request = None
    try:
        module_globals = runpy.run_path(TARGET, init_globals={"result": helper}, run_name="__main__")
    except SystemExit as exc:
        exit_request = exc
    except BaseException as exc:  # noqa: BLE001 - every failure of user code is reported
        traceback.print_exception(type(exc), exc, _user_traceback(exc))
        helper.error(exc)
    status = _report(helper, module_globals)
    sys.stdout.flush()
    if exit_request is not None:
        raise exit_request
    sys.exit(status)


_main()
