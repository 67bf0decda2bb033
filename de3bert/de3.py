"""DE3-BERT (placeholder)."""
