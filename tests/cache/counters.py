"""Call counters for tests that run in this process. Tasks reach them as attributes of this
module: a module is part of a key by its name only, so counting does not change keys."""

from __future__ import annotations

calls: list[object] = []
