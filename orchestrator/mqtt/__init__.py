"""The orchestrator's own MQTT 5 layer: no client library, nothing of one's internals.

``codec``: sans-IO packets to and from bytes (shared with ``benchmarks/_mqtt_raw.py`` and
the test probe); ``protocol``: the ``asyncio.Protocol`` that feeds it for the link
(``orchestrator.mqtt.link``); ``reasons``: reason codes by name.
"""
