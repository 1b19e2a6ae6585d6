"""Keys, certificates and API tokens."""
