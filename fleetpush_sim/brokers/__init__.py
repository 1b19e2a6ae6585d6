"""The brokers of the compatibility matrix (docs/broker.md), each started from its own
``broker_config/`` on free ports in a working directory of its own.

``make_broker(name, workdir, topics)`` returns an unstarted broker; ``start()``,
``add_device()``, ``reload()``, ``stop()`` and ``kill()`` work alike on all of them (Mosquitto
is ``orchestrator.broker.MosquittoBroker``, the product's own). ``NatsCluster`` is several
nats-server nodes clustered on one machine (issue 14.4).
"""

from __future__ import annotations

from pathlib import Path

from fleetpush_protocol.topics import Topics
from orchestrator.broker import MosquittoBroker

from .base import BrokerEndpoint, BrokerNotFoundError, ExternalBroker
from .ejabberd import EjabberdBroker
from .nats import NatsBroker
from .nats_cluster import NatsCluster
from .rabbitmq import RabbitmqBroker

__all__ = [
    "BROKERS",
    "BrokerEndpoint",
    "BrokerNotFoundError",
    "EjabberdBroker",
    "ExternalBroker",
    "MatrixBroker",
    "NatsBroker",
    "NatsCluster",
    "RabbitmqBroker",
    "make_broker",
]

MatrixBroker = MosquittoBroker | ExternalBroker

_CLASSES: dict[str, type[ExternalBroker]] = {
    "ejabberd": EjabberdBroker,
    "nats": NatsBroker,
    "rabbitmq": RabbitmqBroker,
}
BROKERS = ("mosquitto", *_CLASSES)


def make_broker(name: str, workdir: Path, topics: Topics) -> MatrixBroker:
    """The broker called ``name`` (one of ``BROKERS``), configured in ``workdir``."""
    if name == "mosquitto":
        return MosquittoBroker(workdir, topics=topics)
    return _CLASSES[name](workdir, topics=topics)
