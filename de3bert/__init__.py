"""DE3-BERT: distance-enhanced early exiting with prototypical networks, and its baselines engine."""
