"""Feature drift: reference distributions (``profile``) and the live monitor with its alerts
(``drift``)."""
