"""The Mosquitto configuration template fleetpush renders for its brokers, shipped as package
data so that a wheel install has it too (``importlib.resources.files("broker_config")``)."""
