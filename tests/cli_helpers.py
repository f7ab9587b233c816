"""The ``bidder`` command in process, as a shell would call it (``click.testing.CliRunner``)."""

from __future__ import annotations

from click.testing import CliRunner, Result

from streams.cli import main


def bidder(*args: object) -> Result:
    """Run ``bidder ARGS...``; the result has ``exit_code``, ``stdout`` and ``stderr``. Exceptions other than
    ``SystemExit`` propagate, with their traceback."""
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
