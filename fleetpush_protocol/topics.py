"""Topic names under a configurable prefix, and the scopes sequences are counted in.

{prefix}/keyring/{version}          orchestrator -> all   retained  QoS 1
{prefix}/keyring/latest             orchestrator -> all   retained  QoS 1 (the newest again)
{prefix}/support                    orchestrator -> all   retained  QoS 1 (support periods)
{prefix}/device/{id}/notice         orchestrator -> id    retained  QoS 1
{prefix}/group/{group}/notice       orchestrator -> group retained  QoS 1
{prefix}/device/{id}/report         id -> orchestrator    -         QoS 1
{prefix}/device/{id}/presence       id -> orchestrator    retained  QoS 1 (also the will)
{prefix}/device/{id}/inventory      id -> orchestrator    retained  QoS 1
{prefix}/device/{id}/ack            orchestrator -> id    -         QoS 1 (reports stored)
"""

from __future__ import annotations

from dataclasses import dataclass

from fleetpush_protocol.fields import check_name

__all__ = ["DEFAULT_PREFIX", "Topics", "device_scope", "group_scope"]

DEFAULT_PREFIX = "fleetpush"


def device_scope(device_id: str) -> str:
    return f"device/{device_id}"


def group_scope(group: str) -> str:
    return f"group/{group}"


@dataclass(frozen=True, slots=True)
class Topics:
    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        parts = self.prefix.split("/")
        if not self.prefix or any(not p or p.startswith("$") for p in parts):
            raise ValueError(f"topic prefix {self.prefix!r}: levels must be non-empty, no '$'")
        if any(c in self.prefix for c in "+#\x00"):
            raise ValueError(f"topic prefix {self.prefix!r} may not contain '+', '#' or NUL")

    def keyring(self, version: int) -> str:
        return f"{self.prefix}/keyring/{version}"

    @property
    def support(self) -> str:
        return f"{self.prefix}/support"

    @property
    def keyring_filter(self) -> str:
        return f"{self.prefix}/keyring/+"

    @property
    def keyring_latest(self) -> str:
        """The newest keyring on an exact topic too: a broker that keeps retained messages
        for exact subscriptions only (RabbitMQ 3.10) sends none to ``keyring/+``."""
        return f"{self.prefix}/keyring/latest"

    def device_notice(self, device_id: str) -> str:
        return f"{self.prefix}/device/{check_name(device_id, 'device id')}/notice"

    def group_notice(self, group: str) -> str:
        return f"{self.prefix}/group/{check_name(group, 'group')}/notice"

    def notice_topic_for_scope(self, scope: str) -> str:
        kind, _, name = scope.partition("/")
        if kind == "device":
            return self.device_notice(name)
        if kind == "group":
            return self.group_notice(name)
        raise ValueError(f"unknown scope {scope!r}")

    def report(self, device_id: str) -> str:
        return f"{self.prefix}/device/{check_name(device_id, 'device id')}/report"

    def presence(self, device_id: str) -> str:
        return f"{self.prefix}/device/{check_name(device_id, 'device id')}/presence"

    def inventory(self, device_id: str) -> str:
        return f"{self.prefix}/device/{check_name(device_id, 'device id')}/inventory"

    def ack(self, device_id: str) -> str:
        return f"{self.prefix}/device/{check_name(device_id, 'device id')}/ack"

    def device_from_topic(self, topic: str) -> tuple[str, str] | None:
        """Split ``{prefix}/device/{id}/{kind}`` into (id, kind), else None."""
        head = f"{self.prefix}/device/"
        if not topic.startswith(head):
            return None
        rest = topic[len(head) :].split("/")
        if len(rest) != 2:
            return None
        return rest[0], rest[1]

    @property
    def reports_filter(self) -> str:
        return f"{self.prefix}/device/+/report"

    @property
    def presence_filter(self) -> str:
        return f"{self.prefix}/device/+/presence"

    @property
    def inventory_filter(self) -> str:
        return f"{self.prefix}/device/+/inventory"
