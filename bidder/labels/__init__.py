"""Outcomes become labels: provisional impressions, label updates and the click index
(``attribution``), a purchase's conversion or refusal (``purchase_decisions``), recent outcomes with a
click's price and matured labels (``auction_log``), predicted vs observed rates (``calibration``)."""
