"""The code blocks of README.md and docs/index.md run as written (in a temporary folder); the
README's run again in the same folder, as a user runs a quickstart twice."""
from __future__ import annotations

import re
from pathlib import Path

import anyio
import pytest

from lsmvec import AsyncClient, Client, generate_key
from lsmvec.errors import IndexExistsError, InvalidArgumentError, WrongKeyError

ROOT = Path(__file__).resolve().parents[2]
BLOCKS = [(name, i, block) for name in ("README.md", "docs/index.md")
          for i, block in enumerate(re.findall(r"```python\n(.*?)```", (ROOT / name).read_text(),
                                               re.S))]


@pytest.mark.parametrize("name,number,code", BLOCKS, ids=[f"{n}#{i}" for n, i, _ in BLOCKS])
def test_documented_example_runs(name: str, number: int, code: str, tmp_path, monkeypatch,
                                 capsys) -> None:
    monkeypatch.chdir(tmp_path)
    runs = 2 if name == "README.md" else 1  # the README's examples are rerunnable
    for _ in range(runs):
        namespace: dict = {"__name__": "__doc_example__"}
        exec(compile(code, f"{name}#{number}", "exec"), namespace)  # noqa: S102 - our own docs
    folders = re.findall(r'Client\("([^"]+)"', code)
    assert folders, "every example opens a Client on a folder"
    for folder in folders:  # the example really created its index folder
        assert any((tmp_path / folder).iterdir())


def test_get_or_create_index(tmp_path) -> None:
    key = generate_key()
    with Client(tmp_path) as client:
        made = client.get_or_create_index("docs", key, dimension=4, metric="cosine")
        made.upsert([("a", [1, 2, 3, 4])])
        with pytest.raises(IndexExistsError):  # create_index itself still refuses
            client.create_index("docs", key, dimension=4, metric="cosine")
        again = client.get_or_create_index("docs", key, dimension=4, metric="cosine")
        assert again.get_num_vectors() == 1
        assert client.get_or_create_index("docs", key, index_config={"dimension": 4,
                                                                     "metric": "cosine"})
        assert client.get_or_create_index("docs", key, metric="cosine").dimension == 4
        for kwargs, words in (({"dimension": 8, "metric": "cosine"}, ["dimension=4", "dimension=8"]),
                              ({"dimension": 4}, ["'cosine'", "'euclidean'"]),
                              ({"dimension": 4, "metric": "cosine", "embedding_model": "m"},
                               ["embedding_model=None", "embedding_model='m'"])):
            with pytest.raises(InvalidArgumentError) as info:
                client.get_or_create_index("docs", key, **kwargs)
            assert "'docs'" in str(info.value) and all(w in str(info.value) for w in words)
        with pytest.raises(WrongKeyError):
            client.get_or_create_index("docs", generate_key(), dimension=4, metric="cosine")
        with pytest.raises(TypeError, match="memtabel_bytes"):  # checked though it exists
            client.get_or_create_index("docs", key, dimension=4, metric="cosine",
                                       memtabel_bytes=5)
        free = client.get_or_create_index("free", key)  # no dimension yet: takes any
        assert client.get_or_create_index("free", key, dimension=16).dimension is None
        free.upsert([("x", [0.0] * 16)])
        assert sorted(client.list_indexes()) == ["docs", "free"]


def test_async_get_or_create_index(tmp_path) -> None:
    key = generate_key()

    async def main() -> tuple[int, str]:
        async with AsyncClient(tmp_path) as client:
            first = await client.get_or_create_index("notes", key, dimension=3)
            await first.upsert([("a", [0.1, 0.2, 0.3])])
            second = await client.get_or_create_index("notes", key, dimension=3)
            with pytest.raises(InvalidArgumentError, match="dimension=2"):
                await client.get_or_create_index("notes", key, dimension=2)
            return await second.get_num_vectors(), second.metric

    assert anyio.run(main) == (1, "euclidean")
