"""fleetpush's device agent: ``fleetpush-device --config device.toml``.

``device_client.wiring.build_agent(config)`` makes the ``DeviceAgent`` of one device; many
can share one event loop for simulations.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
