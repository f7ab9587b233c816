"""A click becomes money once: the ledger (``billing``: charged once by click id, never past the
shop's daily budget) and the bill agent's decisions over a batch of clicks (``click_decisions``)."""
