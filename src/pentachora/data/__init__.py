"""pentachora.data."""
