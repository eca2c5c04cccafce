"""Immutable segments (sealed files + ScaNN), flush and merge policy. Imports ``wal`` only."""
from lsmvec.compaction.scann_params import SearchParams, choose_params
from lsmvec.compaction.sealed_file import SealedFileInfo, read_sealed, write_sealed
from lsmvec.compaction.segment import (FileEntry, Segment, SegmentFiles, build_and_open_segment,
                                build_segment)

__all__ = [
    "FileEntry",
    "SealedFileInfo",
    "SearchParams",
    "Segment",
    "SegmentFiles",
    "build_and_open_segment",
    "build_segment",
    "choose_params",
    "read_sealed",
    "write_sealed",
]
