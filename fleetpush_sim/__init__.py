"""A simulated fleet of real device agents, and the self-contained demo built on it.

``fleetpush demo`` (``demo.py``) starts Mosquitto, the orchestrator and N devices in one
process and watches a three-phase rollout; ``fleetpush simulate`` (``simulate.py``) runs the
same fleet against an orchestrator and broker that are already running. The devices are
``device_client.agent.DeviceAgent`` instances, the real client code, each with its own
state folder and broker credentials (``fleet.py``).
"""
