"""Running Mosquitto from broker_config/ and managing the identities it accepts.

``mosquitto`` (``MosquittoBroker``) ties together ``render`` (the files, pure), ``process``
(the mosquitto process), ``registry`` (who may connect), ``reload`` (a reload confirmed by
the broker itself) and ``revocation``.
"""

from orchestrator.broker.credentials import (
    BrokerUser,
    device_grants,
    hash_password,
    render_acl,
    render_passwd,
)
from orchestrator.broker.info import INFO_FILE, BrokerInfo, read_info
from orchestrator.broker.mosquitto import MosquittoBroker
from orchestrator.broker.process import (
    MosquittoNotFoundError,
    find_mosquitto,
    free_port,
    listening,
)
from orchestrator.broker.registry import Identity, IdentityRegistry
from orchestrator.broker.reload import ReloadError
from orchestrator.broker.render import CONFIG_DIR, AuthFiles, render_auth_files, render_config
from orchestrator.broker.revocation import RevocationError

__all__ = [
    "CONFIG_DIR",
    "INFO_FILE",
    "AuthFiles",
    "BrokerInfo",
    "BrokerUser",
    "Identity",
    "IdentityRegistry",
    "MosquittoBroker",
    "MosquittoNotFoundError",
    "ReloadError",
    "RevocationError",
    "device_grants",
    "find_mosquitto",
    "free_port",
    "hash_password",
    "listening",
    "read_info",
    "render_acl",
    "render_auth_files",
    "render_config",
    "render_passwd",
]
