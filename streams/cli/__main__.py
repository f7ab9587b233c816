"""``python -m streams.cli`` is the ``bidder`` command."""

from streams.cli import main

main()
