"""The README's examples run as written."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def test_readme_examples_run(settings, monkeypatch, tmp_path):
    monkeypatch.setenv("RDS_URL", settings[0])
    monkeypatch.setenv("RDS_API_KEY", settings[1])
    monkeypatch.chdir(tmp_path)
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "the README has python examples"
    for block in blocks:
        exec(compile(block, str(README), "exec"), {"__name__": "readme"})
