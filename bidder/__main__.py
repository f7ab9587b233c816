"""``python -m bidder`` is the ``bidder`` command."""

from bidder.cli import main

main()
