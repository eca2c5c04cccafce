"""Table tests of the pure parts of segments: the ScaNN configuration picker and file names."""
from __future__ import annotations

import numpy as np
import pytest

from lsmvec.compaction.filenames import (SEGMENT_FILES, SCANN_DOCIDS_FILE, is_temp_segment_dir_name,
                                  parse_segment_dir_name, segment_dir_name,
                                  temp_segment_dir_name)
from lsmvec.compaction.scann_params import (BRUTE_FORCE_MAX_ROWS, KIND_BRUTE, KIND_TREE_AH,
                                     MIN_TREE_ROWS, choose_params, leaves_for_probes,
                                     scann_distance, scann_scores_to_distances)
from lsmvec.wal.errors import InvalidArgumentError


@pytest.mark.parametrize("n, dim, expected", [
    (1, 8, KIND_BRUTE), (BRUTE_FORCE_MAX_ROWS - 1, 32, KIND_BRUTE),
    (BRUTE_FORCE_MAX_ROWS, 32, KIND_TREE_AH), (15_000, 384, KIND_TREE_AH),
    (MIN_TREE_ROWS - 1, 4096, KIND_BRUTE), (1_000_000, 2, KIND_TREE_AH)])
def test_choose_params_kind_by_size(n: int, dim: int, expected: str) -> None:
    assert choose_params(n, dim, "euclidean").kind == expected


def test_choose_params_tree_settings() -> None:
    params = choose_params(40_000, 64, "cosine")
    assert params.num_leaves == 200 and params.distance == "dot_product"
    assert params.anisotropic_threshold == pytest.approx(0.2)
    assert 1 <= params.leaves_to_search <= params.num_leaves and params.reorder >= 100
    l2 = choose_params(40_000, 64, "euclidean", n_lists=10_000, leaves_to_search=7)
    assert l2.num_leaves == 40_000 // 50 and l2.leaves_to_search == 7
    assert np.isnan(l2.anisotropic_threshold) and l2.distance == "squared_l2"
    assert choose_params(500, 8, "euclidean", kind="tree_ah").kind == KIND_BRUTE
    assert choose_params(30_000, 8, "euclidean", kind="brute").kind == KIND_BRUTE
    assert leaves_for_probes(l2, None) == 7
    assert leaves_for_probes(l2, 0) == 1 and leaves_for_probes(l2, 10**9) == l2.num_leaves
    with pytest.raises(InvalidArgumentError):
        choose_params(100, 8, "euclidean", reorder=0)
    with pytest.raises(InvalidArgumentError):
        scann_distance("hamming")


def test_scann_scores_convert_to_lsmvec_distances() -> None:
    scores = np.array([4.0, 0.25, -1e-7], np.float32)
    np.testing.assert_allclose(scann_scores_to_distances("euclidean", scores), [2.0, 0.5, 0.0])
    np.testing.assert_allclose(scann_scores_to_distances("squared_euclidean", scores),
                               [4.0, 0.25, 0.0])
    np.testing.assert_allclose(scann_scores_to_distances("cosine", np.float32([1.0, 0.5])),
                               [0.0, 0.5])


def test_segment_folder_names_round_trip() -> None:
    assert segment_dir_name(42) == "seg-000042"
    assert parse_segment_dir_name(segment_dir_name(42)) == 42
    assert parse_segment_dir_name("seg-x") is None and parse_segment_dir_name("tmp-seg-1") is None
    temp = temp_segment_dir_name(42)
    assert is_temp_segment_dir_name(temp) and parse_segment_dir_name(temp) is None
    assert temp != temp_segment_dir_name(42)
    assert SCANN_DOCIDS_FILE not in SEGMENT_FILES
