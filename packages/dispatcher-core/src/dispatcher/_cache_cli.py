"""``dispatcher cache info PATH`` and ``dispatcher cache clear PATH [--older-than D]``."""

from __future__ import annotations

import argparse
import os
import re
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from ._cache import Cache
from ._script import UsageError

__all__ = ["add_cache_command", "cache_command", "parse_duration"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``12h``, ``7d``, ``2w`` (or a sum: ``1d12h``) in seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([smhdw]?)", text.strip().lower())
    if not parts or "".join(n + u for n, u in parts) != re.sub(r"\s+", "", text.lower()):
        raise argparse.ArgumentTypeError(
            f"expected a duration such as 90s, 15m, 12h, 7d or 2w, got {text!r}"
        )
    return sum(float(n) * _UNITS[u or "s"] for n, u in parts)


def add_cache_command(commands: Any) -> None:
    """Add ``cache info`` and ``cache clear`` to the ``dispatcher`` command's subparsers."""
    cache = commands.add_parser(
        "cache",
        help="show or clear a result cache (run(..., cache=PATH))",
        description="Show what a result cache holds, or delete its entries.",
    )
    actions = cache.add_subparsers(
        dest="cache_command", metavar="ACTION", parser_class=type(cache), required=True
    )
    info = actions.add_parser(
        "info",
        help="entries, bytes, and the last run's hits and misses",
        description="Show a cache's entries, their size, and the last run's hits and misses.",
    )
    info.add_argument("path", metavar="PATH", help="the cache directory")
    clear = actions.add_parser(
        "clear",
        help="delete entries (all, or those not used for a while)",
        description="Delete a cache's entries: all of them, or those not used for DURATION.",
    )
    clear.add_argument("path", metavar="PATH", help="the cache directory")
    clear.add_argument(
        "--older-than",
        metavar="DURATION",
        type=parse_duration,
        help="only entries not used for this long: 90s, 15m, 12h, 7d, 2w",
    )


def cache_command(args: argparse.Namespace) -> int:
    """Run ``dispatcher cache ...``; the exit status."""
    try:
        return _cache_command(args)
    except PermissionError as exc:  # one line, as for any path that cannot be used
        raise UsageError(f"{exc.filename or args.path!r}: {exc.strerror}") from None


def _cache_command(args: argparse.Namespace) -> int:
    path = Path(args.path)
    if not path.is_dir():
        raise UsageError(f"{str(path)!r} is not a directory (no cache there)")
    is_cache = (path / "entries").is_dir() or (path / "last-run.json").exists()
    if not is_cache and any(path.iterdir()):
        raise UsageError(f"{str(path)!r} is not a dispatcher cache")
    cache = Cache(path)
    entries = path / "entries"
    if entries.is_dir():  # (a run tolerates what it cannot list; this command says so)
        with os.scandir(entries):
            pass
    if args.cache_command == "info":
        info = cache.info()
        out = sys.stdout
        print(f"cache    {info.path}", file=out)
        print(f"entries  {info.entries:,}", file=out)
        print(f"size     {_size(info.nbytes)} ({info.nbytes:,} bytes)", file=out)
        if info.partial:
            print(
                f"partial  {info.partial:,} file{'s' if info.partial > 1 else ''} "
                f"({_size(info.partial_bytes)}) being written, or left by writers that "
                f"died; 'dispatcher cache clear {info.path}' deletes them",
                file=out,
            )
        last = info.last_run
        if last is None:
            print("last run none recorded", file=out)
        else:
            when = datetime.fromtimestamp(last.get("finished", 0)).astimezone()
            print(
                f"last run {last.get('hits', 0):,} hits, {last.get('misses', 0):,} misses, "
                f"{last.get('uncacheable', 0):,} uncacheable "
                f"(ended {when:%Y-%m-%d %H:%M:%S %Z})",
                file=out,
            )
        return 0
    if entries.is_dir() and not os.access(entries, os.W_OK | os.X_OK):
        raise UsageError(f"{str(entries)!r}: permission denied (nothing deleted)")
    removed = cache.clear(args.older_than)
    print(f"deleted {removed:,} entr{'y' if removed == 1 else 'ies'} from {cache.path}")
    left = cache.info().entries if args.older_than is None else 0
    if left:
        print(f"{left:,} entr{'y' if left == 1 else 'ies'} could not be deleted", file=sys.stderr)
        return 1
    return 0


def _size(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if nbytes < 1024 or unit == "GiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes:.1f} TiB"
