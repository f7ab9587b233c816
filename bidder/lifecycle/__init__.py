"""The model lifecycle around the query path: frozen datasets (``dataset``), recorded training runs
(``tracking``), the offline and online scoreboards (``scoreboard``, ``online_board``), the promotion gate
(``promotion``) and the drift report (``drift_report``). Nothing on the query path imports these."""
