"""Index options (lsmvec.request.options.IndexOptions): create_index checks every option keyword
before anything is written; CONFIG stores the validated options; an older CONFIG (another
version's option names) still opens.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lsmvec import Client, generate_key
from lsmvec.disk.config import read_config, write_config
from lsmvec.errors import InvalidArgumentError, InvalidTypeError
from lsmvec.request.options import IndexOptions
from lsmvec.request.analyzer import ANALYZER_VERSION

DIM = 4
DOCS = Path(__file__).resolve().parents[2] / "docs" / "tuning.md"


def _on_disk(root: Path) -> list[str]:
    """Every path under the client's folder (the catalog lock included)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _stored_options(client: Client, name: str) -> dict[str, Any]:
    return json.loads((client.path / name / "CONFIG").read_text())["options"]


@pytest.fixture
def client(tmp_path: Path):
    with Client(tmp_path / "data") as c:
        yield c


# ----------------------------------------------------------------------------- refused options

def test_mistyped_option_is_a_type_error_naming_it_and_writes_nothing(client: Client) -> None:
    key = generate_key()
    client.create_index("other", key, dimension=DIM)
    listed, files = client.list_indexes(), _on_disk(client.path)
    with pytest.raises(TypeError) as info:
        client.create_index("d", key, dimension=DIM, memtabel_bytes=5)
    message = str(info.value)
    assert isinstance(info.value, InvalidTypeError)
    assert "'memtabel_bytes'" in message
    assert "did you mean 'memtable_bytes'" in message
    for known in IndexOptions.keywords():  # names() but analyzer_version, + text_fields
        assert known in message, message
    assert "analyzer_version" not in message
    assert client.list_indexes() == listed == ["other"]
    assert _on_disk(client.path) == files  # no index folder, no .creating-* leftover
    assert not (client.path / "d").exists()


def test_unknown_options_are_all_named_the_first_first(client: Client) -> None:
    with pytest.raises(TypeError) as info:
        client.create_index("d", generate_key(), dimension=DIM, zzz=1, memtable_bytes=4096,
                            aaa=2)
    message = str(info.value)
    assert message.index("'zzz'") < message.index("'aaa'"), message
    assert client.list_indexes() == []


@pytest.mark.parametrize("option, value, error", [
    ("memtable_bytes", "4096", InvalidTypeError),
    ("memtable_bytes", 4096.0, InvalidTypeError),
    ("memtable_bytes", True, InvalidTypeError),
    ("memtable_bytes", None, InvalidTypeError),
    ("memtable_bytes", 0, InvalidArgumentError),
    ("memtable_bytes", -1, InvalidArgumentError),
    ("memtable_bytes", (1 << 40) + 1, InvalidArgumentError),
    ("wal_roll_bytes", [1], InvalidTypeError),
    ("wal_roll_bytes", 0, InvalidArgumentError),
    ("background_compaction", 1, InvalidTypeError),
    ("background_compaction", "no", InvalidTypeError),
    ("background_compaction", None, InvalidTypeError),
    ("space_amplification", 1.0, InvalidArgumentError),  # the live data alone is 1x
    ("space_amplification", 0.5, InvalidArgumentError),
    ("space_amplification", float("nan"), InvalidArgumentError),
    ("space_amplification", "3", InvalidTypeError),
])
def test_bad_value_names_the_option_and_writes_nothing(client: Client, option: str, value: Any,
                                                       error: type) -> None:
    files = _on_disk(client.path)
    with pytest.raises(error) as info:
        client.create_index("d", generate_key(), dimension=DIM, **{option: value})
    assert option in str(info.value), str(info.value)
    assert client.list_indexes() == []
    assert _on_disk(client.path) == files


def test_options_are_checked_before_the_index_name_and_the_key(client: Client) -> None:
    with pytest.raises(TypeError, match="memtabel_bytes"):
        client.create_index("bad/name", b"short", dimension=DIM, memtabel_bytes=5)


def test_index_options_are_frozen_and_documented() -> None:
    options = IndexOptions()
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.memtable_bytes = 5  # type: ignore[misc]
    described = IndexOptions.describe()
    assert [row[0] for row in described] == list(IndexOptions.names())
    docs = DOCS.read_text()
    for name, kind, default, (low, high), doc in described:
        assert kind in ("int", "bool", "float", "str", "MetadataSchema") and doc, name
        assert default == getattr(options, name)
        assert f"`{name}`" in docs, f"docs/tuning.md does not document {name}"
    assert IndexOptions(memtable_bytes=np.int64(4096)).memtable_bytes == 4096
    assert type(IndexOptions(memtable_bytes=np.int64(4096)).memtable_bytes) is int


# ----------------------------------------------------------------------------- stored options

def test_valid_options_round_trip_through_config_and_reopen(client: Client) -> None:
    key = generate_key()
    given = {"memtable_bytes": 5000, "background_compaction": False, "wal_roll_bytes": 4096,
             "target_recall": 0.9, "space_amplification": 2.5, "storage_precision": "float16",
             "metadata_schema": {"tag": {"filterable": True, "pattern": True, "full_text": False}},
             "bm25_k1": 2.0, "bm25_b": 0.5}
    index = client.create_index("d", key, dimension=DIM, **given)
    expected = IndexOptions(**given)
    assert index._core.config.options == expected
    # every option, validated; the analyzer version is lsmvec's own
    assert _stored_options(client, "d") == {**given, "analyzer_version": ANALYZER_VERSION}
    index.upsert([("a", np.ones(DIM, np.float32))])
    config_view = index.index_config()
    assert set(config_view) == {"dimension", "metric", "index_type", "n_lists", "embedding_model",
                               "metadata_schema", "bm25"}
    assert config_view["metadata_schema"] == given["metadata_schema"]
    index.close()
    again = client.load_index("d", key)
    core = again._core
    assert core.config.options == expected
    assert (core.memtable_bytes, core.background, core.wal.roll_bytes) == (5000, False, 4096)
    assert core.maintenance.amplification == 2.5
    assert again.index_config() == config_view
    assert again.get(["a"])[0]["id"] == "a"
    again.close()


def test_defaults_are_stored_when_no_option_is_given(client: Client) -> None:
    key = generate_key()
    client.create_index("d", key, dimension=DIM).close()
    assert _stored_options(client, "d") == IndexOptions().to_stored()
    index = client.load_index("d", key)
    assert index._core.config.options == IndexOptions()
    index.close()


def _rewrite_as_an_older_version(folder: Path, key: bytes, options: dict[str, Any]) -> None:
    """CONFIG as another version would have written it: `options` as they are, with a valid
    MAC (the key holder wrote it)."""
    config, cipher = read_config(folder, key)
    write_config(folder, dataclasses.replace(config, options=options), cipher)


def test_old_config_with_unknown_option_opens_with_a_warning(
        client: Client, caplog: pytest.LogCaptureFixture) -> None:
    key = generate_key()
    client.create_index("d", key, dimension=DIM).close()
    _rewrite_as_an_older_version(client.path / "d", key,
                                 {"memtable_bytes": 5000, "old_knob": 7, "compression": "zstd"})
    with caplog.at_level(logging.WARNING, logger="lsmvec.request.options"):
        index = client.load_index("d", key)
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "old_knob" in warned and "compression" in warned, warned
    assert index._core.config.options == IndexOptions(memtable_bytes=5000)
    index.upsert([("a", np.ones(DIM, np.float32))])
    index.flush()
    assert index.verify()["ok"]
    index.close()
    assert _stored_options(client, "d") == {"memtable_bytes": 5000, "old_knob": 7,
                                            "compression": "zstd"}  # opening rewrites nothing


def test_old_config_with_a_bad_value_opens_with_the_default(
        client: Client, caplog: pytest.LogCaptureFixture) -> None:
    key = generate_key()
    client.create_index("d", key, dimension=DIM).close()
    _rewrite_as_an_older_version(client.path / "d", key,
                                 {"memtable_bytes": "5000", "wal_roll_bytes": 0,
                                  "background_compaction": False})
    with caplog.at_level(logging.WARNING, logger="lsmvec.request.options"):
        index = client.load_index("d", key)
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "memtable_bytes" in warned and "wal_roll_bytes" in warned, warned
    assert index._core.config.options == IndexOptions(background_compaction=False)
    index.close()


def test_config_rewrite_keeps_the_options_and_drops_unknown_names(client: Client) -> None:
    """The first upsert of an index made without a dimension rewrites CONFIG: the typed
    options are written back (unknown names of an older version are not), still authenticated."""
    key = generate_key()
    client.create_index("nodim", key, background_compaction=False).close()
    _rewrite_as_an_older_version(client.path / "nodim", key,
                                 {"background_compaction": False, "memtable_bytes": 7000,
                                  "old_knob": 1})
    index = client.load_index("nodim", key)
    index.upsert([("a", np.ones(DIM, np.float32))])
    index.close()
    assert _stored_options(client, "nodim") == IndexOptions(
        background_compaction=False, memtable_bytes=7000).to_stored()
    again = client.load_index("nodim", key)
    assert again.dimension == DIM
    assert again._core.config.options.memtable_bytes == 7000
    again.close()
