"""pentachora.hub."""
