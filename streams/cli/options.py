"""What click lacks for our options: mutually exclusive groups and comma-separated integer lists.

>>> IntList().convert("1,8,16", None, None)
[1, 8, 16]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import click

__all__ = ["IntList", "one_of", "only_with"]


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def one_of(params: Mapping[str, Any], *names: str, required: bool = True) -> str | None:
    """The one of ``names`` given (not None, False or empty) in ``params``; a :class:`click.UsageError` when
    several are, or when none is and ``required``."""
    given = [n for n in names if params.get(n) not in (None, False, ())]
    flags = " | ".join(_flag(n) for n in names)
    if len(given) > 1:
        raise click.UsageError(f"{' and '.join(_flag(n) for n in given)} exclude each other: pass one of {flags}")
    if not given and required:
        raise click.UsageError(f"pass one of {flags}")
    return given[0] if given else None


def only_with(params: Mapping[str, Any], flag: str, *names: str) -> None:
    """A :class:`click.UsageError` when any of ``names`` is given (not None, False or empty) without ``flag``."""
    stray = [_flag(n) for n in names if params.get(n) not in (None, False, ())]
    if stray and not params.get(flag):
        raise click.UsageError(f"{', '.join(stray)} only with {_flag(flag)}")


class IntList(click.ParamType):
    """Comma-separated positive integers, e.g. ``1,8,16,32``."""

    name = "K,K,..."

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> list[int]:
        if isinstance(value, list):
            return value
        try:
            ks = [int(t) for t in str(value).split(",") if t.strip()]
        except ValueError:
            self.fail(f"expected comma-separated integers, got {value!r}", param, ctx)
        if not ks or min(ks) < 1:
            self.fail(f"expected positive integers, got {value!r}", param, ctx)
        return ks
