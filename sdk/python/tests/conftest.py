"""The suite runs against a live manager: $RDS_URL and $RDS_API_KEY (scripts/test starts one)."""

import os

import pytest

from run_dat_sheesh import Client


@pytest.fixture(scope="session")
def settings():
    url, key = os.environ.get("RDS_URL"), os.environ.get("RDS_API_KEY")
    if not url or not key:
        pytest.fail("set RDS_URL and RDS_API_KEY to a running rds serve")
    return url, key


@pytest.fixture
def client(settings):
    with Client(*settings) as c:
        yield c
