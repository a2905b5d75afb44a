"""pentachora.nn."""
