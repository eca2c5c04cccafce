"""The `lsmvec` command: demo, bench, bench-ingest, bench-space, inspect, verify, compact,
backup, restore.

Exit codes: 0 success; 1 verify found damage; 2 usage error (also: no key given, a key that is
not hex, a --key-file that cannot be read); 3 the index cannot be opened (not found, locked by
another process, wrong or malformed key); 4 the index is corrupt.
The key is read from --key-file (the 32 raw bytes, or 64 hex digits as text), --key-hex, or
the LSMVEC_KEY environment variable (hex); it is never printed.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

EXIT_DAMAGED, EXIT_USAGE, EXIT_OPEN, EXIT_CORRUPT = 1, 2, 3, 4


KEY_BYTES = 32


def _key_from_file(name: str) -> bytes:
    """The key in file `name`: 32 raw bytes, or 64 hex digits (surrounding whitespace, such as
    the newline `echo` or an editor adds, is ignored)."""
    try:
        data = Path(name).read_bytes()
    except OSError as exc:
        raise SystemExit(f"lsmvec: cannot read --key-file {name}: {exc.strerror or exc}") from None
    if len(data) == KEY_BYTES:
        return data
    try:
        return bytes.fromhex(data.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        pass
    print(f"lsmvec: --key-file {name} holds {len(data)} bytes that are not a key: it must hold the "
          f"{KEY_BYTES} raw key bytes or {2 * KEY_BYTES} hex digits", file=sys.stderr)
    raise SystemExit(EXIT_OPEN)  # a malformed key: the index cannot be opened with it


def _key(args: argparse.Namespace) -> bytes:
    if args.key_file:
        return _key_from_file(args.key_file)
    text = args.key_hex or os.environ.get("LSMVEC_KEY")
    if not text:
        raise SystemExit("lsmvec: no key: pass --key-file, --key-hex or set LSMVEC_KEY (hex)")
    try:
        return bytes.fromhex(text.strip())
    except ValueError:
        raise SystemExit("lsmvec: the key must be hex (64 hex digits for 32 bytes)") from None


def _open(args: argparse.Namespace, *, read_only: bool = False):
    """(client, index) for PATH = <root>/<index_name>; exits with a clear message.
    `read_only`: as a reader beside a running writer (no lock taken, nothing written)."""
    from lsmvec import Client
    from lsmvec.disk.config import config_exists
    from lsmvec.errors import CorruptionError, LsmvecError
    folder = Path(args.path).resolve()
    try:
        if not config_exists(folder):
            print(f"lsmvec: {folder} is not an lsmvec index folder (no CONFIG)", file=sys.stderr)
            raise SystemExit(EXIT_OPEN)
        key = _key(args)
        client = Client(folder.parent, read_only=read_only)
        return client, client.load_index(folder.name, key)
    except CorruptionError as exc:
        print(f"lsmvec: index is corrupt: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_CORRUPT) from None
    except LsmvecError as exc:
        print(f"lsmvec: cannot open {folder}: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_OPEN) from None


def _print(obj: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(obj, indent=2, default=str))
        return
    for key, value in obj.items():
        if isinstance(value, list) and value and isinstance(value[0], dict):
            print(f"{key}:")
            for row in value:
                print("  " + ", ".join(f"{k}={v}" for k, v in row.items()))
        else:
            print(f"{key}: {value}")


def cmd_inspect(args: argparse.Namespace) -> int:
    from lsmvec.wal import list_logs
    client, index = _open(args, read_only=not args.write)
    with client:
        stats = index.stats()
        logs = [{"file": path.name, "first_lsn": lsn, "bytes": path.stat().st_size}
                for lsn, path in list_logs(Path(args.path) / "wal")]
        report = {"index": index.index_name(), **index.index_config(),
                  "training_state": stats.pop("training_state"), **stats, "wal_logs": logs}
        _print(report, args.json)
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    client, index = _open(args, read_only=not args.write)
    with client:
        report = {"index": index.index_name(), **index.stats()}
    _print(report, args.json)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    client, index = _open(args, read_only=not args.write)
    with client:
        report = index.verify()
    _print(report, args.json)
    if not report["ok"]:
        print(f"lsmvec: {len(report['problems'])} problem(s) found", file=sys.stderr)
        return EXIT_DAMAGED
    return 0


def cmd_compact(args: argparse.Namespace) -> int:
    from tqdm import tqdm
    client, index = _open(args)
    with client:
        before = index.stats()
        with tqdm(total=1, desc="training" if args.train else "compacting", unit="job",
                  disable=args.quiet or args.json) as bar:
            started = time.perf_counter()
            index.train() if args.train else index.compact()
            bar.update(1)
        elapsed = time.perf_counter() - started
        after, name = index.stats(), index.index_name()
    if args.json:
        _print({"index": name, "action": "train" if args.train else "compact",
                "seconds": round(elapsed, 3), "segments_before": before["segments"],
                "segments_after": after["segments"], "disk_bytes_before": before["disk_bytes"],
                "disk_bytes_after": after["disk_bytes"],
                "training_state": after["training_state"]}, True)
        return 0
    print(f"{len(before['segments'])} segment(s) -> {len(after['segments'])} in "
          f"{elapsed:.1f} s; disk {before['disk_bytes']:,} -> "
          f"{after['disk_bytes']:,} bytes; state {after['training_state']}")
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    """Open PATH (as its writer: beside a running application, call index.backup() there) and
    copy it to DEST at one log position."""
    from lsmvec.errors import LsmvecError
    client, index = _open(args)
    with client:
        try:
            report = index.backup(args.dest)
        except LsmvecError as exc:
            print(f"lsmvec: backup failed: {exc}", file=sys.stderr)
            return EXIT_USAGE if isinstance(exc, (ValueError, TypeError)) else EXIT_OPEN
    _print(report, args.json)
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    """Copy the backup BACKUP to the new index folder DEST, after opening and verifying it."""
    from lsmvec.db.backup import restore
    from lsmvec.errors import (CorruptionError, IndexNotFoundError, LsmvecError, WrongKeyError)
    key = _key(args)
    try:
        report = restore(Path(args.path).resolve(), Path(args.dest).resolve(), key)
    except CorruptionError as exc:
        print(f"lsmvec: the backup is corrupt: {exc}", file=sys.stderr)
        return EXIT_CORRUPT
    except (IndexNotFoundError, WrongKeyError) as exc:
        print(f"lsmvec: cannot open {args.path}: {exc}", file=sys.stderr)
        return EXIT_OPEN
    except LsmvecError as exc:
        print(f"lsmvec: restore failed: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, (ValueError, TypeError)) else EXIT_OPEN
    _print(report, args.json)
    return 0


def _delegate(module: str):
    def run(args: argparse.Namespace) -> int:
        rest = list(args.rest)
        target = module
        if module == "bench_lsm" and (getattr(args, "compare", False) or "--compare" in rest):
            if "--compare" in rest:  # lsmvec bench --compare: the peers
                rest.remove("--compare")
            target = "bench_compare"
        mod = __import__(f"lsmvec.tools.{target}", fromlist=["main"])
        return int(mod.main(rest) or 0)
    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lsmvec", description=__doc__.splitlines()[0],
                                     epilog="Exit codes: 0 ok, 1 damage found, 2 usage, "
                                            "3 cannot open, 4 corrupt.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module, text in (("demo", "demo", "a guided tour on 100k synthetic vectors"),
                               ("bench", "bench_lsm", "lsmvec vs raw ScaNN: ingest, recall, QPS "
                                "(--compare: vs every installed peer store)"),
                               ("bench-ingest", "bench_ingest", "durable ingest: upserts/s with "
                                "fsync (group commit) and without, reopen and log replay speed"),
                               ("bench-space", "bench_space", "disk use under sustained overwrites "
                                "or a mixed load, against the live data")):
        p = sub.add_parser(name, help=text, description=text + " (options: lsmvec " + name + " -- --help)")
        if name == "bench":
            p.add_argument("--compare", action="store_true",
                           help="the same data against every installed peer store")
        p.add_argument("rest", nargs=argparse.REMAINDER, help="options passed on")
        p.set_defaults(func=_delegate(module))
    for name, func, text in (("inspect", cmd_inspect, "config, stats, segments and log files"),
                             ("stats", cmd_stats, "counts, segments, log and disk bytes"),
                             ("verify", cmd_verify, "check every checksum and tag; exit 1 on damage"),
                             ("compact", cmd_compact, "merge segments now (--train: into one trained)"),
                             ("backup", cmd_backup, "copy the index at one log position to DEST "
                              "(a new index folder)"),
                             ("restore", cmd_restore, "open and verify the backup PATH, then copy "
                              "it to DEST (a new index folder)")):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("path", help="the index folder: <client folder>/<index name>"
                       if name != "restore" else "the backup folder")
        if name in ("backup", "restore"):
            p.add_argument("dest", help="the new index folder: <client folder>/<index name> "
                                        "(absent, or an empty folder)")
        p.add_argument("--key-hex", help="the 32-byte key as hex (else LSMVEC_KEY)")
        p.add_argument("--key-file", help="a file holding the key: its 32 raw bytes, or 64 hex "
                                          "digits as text (a trailing newline is fine)")
        p.add_argument("--json", action="store_true", help="machine-readable output")
        if name in ("inspect", "stats", "verify"):
            p.add_argument("--write", action="store_true",
                           help="open as the writer (takes its lock) instead of as a reader "
                                "beside a running application (the default)")
        if name == "compact":
            p.add_argument("--train", action="store_true", help="merge everything into one trained segment")
            p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
        p.set_defaults(func=func)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # options of the delegated tools (lsmvec bench --n 1000) pass through
        if not hasattr(args, "rest"):
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        args.rest = [*unknown, *args.rest]
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if getattr(args, "rest", None) and args.rest[0] == "--":
        args.rest = args.rest[1:]
    try:
        return args.func(args)
    except SystemExit as exc:  # our own exits carry a code, or a message for a usage error
        if isinstance(exc.code, int):
            return exc.code
        print(exc.code, file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
