"""What every worker folds from the topics: the fold itself (``state``), the world's past merged
into it (``history``), rolling features folded once per source partition and combined (``aggregation``),
and two rules the Kafka layer applies: skipped records (``offset_gaps``) and
idle consumers that must not spin (``fetch_pacing``)."""
