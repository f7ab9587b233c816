"""What drives and measures the product, kept out of it: the simulated world (``market``, ``simulator``,
``simulate``), hostile inputs, the billing oracle, drift injection, the chaos scenarios and the benchmarks.
Nothing in ``bidder/`` or in the serving modules of ``streams/`` imports this package
(``tests/test_core_is_pure.py`` pins it); the ``bidder demo``, ``bench`` and ``chaos`` commands do."""
