"""``python -m bidder`` is the ``bidder`` command."""

from streams.cli import main

main()
