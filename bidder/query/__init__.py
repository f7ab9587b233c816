"""The query path, in order: the catalog's rows (``catalog``), each candidate's rolling counters
(``rolling``) made into the models' features (``features``), scored by the CTR and CVR models
(``scoring``; their sidecars ``model_meta``; deadline-ordered batches ``microbatch``), a bid for each
seller inside its budget (``autobid``, ``pacing``, ``budget``) and the GSP auction (``auction``).
``pipeline`` runs them for a batch of queries; ``shadow`` scores the winners with a challenger."""
