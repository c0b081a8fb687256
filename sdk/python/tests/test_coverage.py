"""Every operation of the manager's /openapi.json is implemented by a method of both clients, or
listed as deliberately missing with the reason."""

import httpx

import run_dat_sheesh
from run_dat_sheesh import AsyncClient, Client


def test_every_operation_is_covered_or_listed_missing(settings):
    spec = httpx.get(f"{settings[0]}/openapi.json").json()
    operations = {f"{method.upper()} {path}" for path, item in spec["paths"].items() for method in item}
    covered, missing = run_dat_sheesh.OPERATIONS, run_dat_sheesh.MISSING
    assert sorted(operations - covered.keys() - missing.keys()) == [], "operations neither implemented nor listed"
    assert sorted((covered.keys() | missing.keys()) - operations) == [], "listed operations the API does not have"
    assert not covered.keys() & missing.keys()
    for op, method in covered.items():
        classes = (AsyncClient,) if method in run_dat_sheesh.ASYNC_ONLY else (Client, AsyncClient)
        for cls in classes:
            assert callable(getattr(cls, method, None)), f"{cls.__name__}.{method} for {op}"
