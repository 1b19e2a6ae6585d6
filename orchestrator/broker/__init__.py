"""Running Mosquitto from broker_config/ and managing the identities it accepts."""

from orchestrator.broker.credentials import (
    BrokerUser,
    device_grants,
    hash_password,
    render_acl,
    render_passwd,
)
from orchestrator.broker.mosquitto import (
    MosquittoBroker,
    MosquittoNotFoundError,
    find_mosquitto,
    free_port,
    render_config,
)
from orchestrator.broker.registry import Identity, IdentityRegistry

__all__ = [
    "BrokerUser",
    "Identity",
    "IdentityRegistry",
    "MosquittoBroker",
    "MosquittoNotFoundError",
    "device_grants",
    "find_mosquitto",
    "free_port",
    "hash_password",
    "render_acl",
    "render_config",
    "render_passwd",
]
