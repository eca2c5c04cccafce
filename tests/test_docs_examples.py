"""The code blocks of README.md and docs/index.md run as written (in a temporary folder)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BLOCKS = [(name, i, block) for name in ("README.md", "docs/index.md")
          for i, block in enumerate(re.findall(r"```python\n(.*?)```", (ROOT / name).read_text(),
                                               re.S))]


@pytest.mark.parametrize("name,number,code", BLOCKS, ids=[f"{n}#{i}" for n, i, _ in BLOCKS])
def test_documented_example_runs(name: str, number: int, code: str, tmp_path, monkeypatch,
                                 capsys) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__doc_example__"}
    exec(compile(code, f"{name}#{number}", "exec"), namespace)  # noqa: S102 - our own docs
    folders = re.findall(r'Client\("([^"]+)"', code)
    assert folders, "every example opens a Client on a folder"
    for folder in folders:  # the example really created its index folder
        assert any((tmp_path / folder).iterdir())
