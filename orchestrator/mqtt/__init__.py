"""MQTT for the orchestrator: a sans-IO codec (``codec``) that the link and benchmarks share."""
