"""pentachora.memory."""
