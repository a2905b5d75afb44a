"""pentachora.training."""
