"""The device's seams to the outside: the MQTT session, its outbox, and the payload fetcher."""
