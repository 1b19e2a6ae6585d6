"""Running Mosquitto from broker_config/ and managing the identities it accepts."""

from orchestrator.broker.credentials import BrokerUser, hash_password, render_acl, render_passwd
from orchestrator.broker.mosquitto import MosquittoBroker, MosquittoNotFoundError, find_mosquitto

__all__ = [
    "BrokerUser",
    "MosquittoBroker",
    "MosquittoNotFoundError",
    "find_mosquitto",
    "hash_password",
    "render_acl",
    "render_passwd",
]
