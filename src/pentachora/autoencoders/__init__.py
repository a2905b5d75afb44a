"""pentachora.autoencoders."""
