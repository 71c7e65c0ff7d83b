"""Whether this replica may act now: kopf's peering rule, applied to the ticker too.

kopf pauses its own watch streams and handlers while a live peer outranks this replica,
but the ticker (operator/ticker.py) is the operator's own task, and kopf offers no public
signal of the pause. So before each pass the ticker asks a `PeeringGate`, which reads the
(Cluster)KopfPeering object kopf keeps its peers' keep-alives in and applies the rule
kopf applies to it (kopf._core.engines.peering.process_peering_event): another live peer
of a higher priority, or of the same priority (kopf pauses both then), means wait. A
failed read means wait as well: acting without knowing is what peering exists to prevent.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

KOPF_GROUP, KOPF_VERSION = "kopf.dev", "v1"
# kopf's default lifetime of a peer record that does not state one.
DEFAULT_LIFETIME_SECONDS = 60
logger = logging.getLogger(__name__)


def own_identity() -> str:
    """This replica's peering identity: its pod's name (POD_ID, set by the chart, as kopf
    reads it), else a name unique to this process. Given to kopf too, so both agree."""
    return os.environ.get("POD_ID") or f"modelpress-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def outranked(peers: Mapping[str, Any], identity: str, priority: int, now: datetime) -> bool:
    """Whether a live peer other than `identity` has a priority at least `priority`.
    `peers` is the peering object's status: identity -> {priority, lifetime, lastseen}."""
    for peer, record in peers.items():
        if peer == identity or not isinstance(record, Mapping):
            continue
        if _alive(record, now) and int(record.get("priority", 0)) >= priority:
            return True
    return False


def _alive(record: Mapping[str, Any], now: datetime) -> bool:
    lastseen = record.get("lastseen")
    if lastseen is None:
        return True  # kopf counts a record without a time as seen just now
    seen = datetime.fromisoformat(str(lastseen))
    if seen.tzinfo is None:
        seen = seen.replace(tzinfo=UTC)
    lifetime = timedelta(seconds=int(record.get("lifetime", DEFAULT_LIFETIME_SECONDS)))
    return seen + lifetime > now


@dataclass(frozen=True)
class PeeringGate:
    """Reads the peering object `name` (cluster-wide, or in `namespace`) through `api`
    (a kubernetes CustomObjectsApi) and answers `may_act`."""

    api: Any
    name: str
    namespace: str | None
    identity: str
    priority: int
    now: Callable[[], datetime] = lambda: datetime.now(UTC)

    def may_act(self) -> bool:
        try:
            peers = (self._read().get("status") or {})
        except Exception as error:  # unknown is not permission
            logger.warning("Cannot read peering %s; pausing until it can be read: %s",
                           self.name, error)
            return False
        return not outranked(peers, self.identity, self.priority, self.now())

    def _read(self) -> dict[str, Any]:
        if self.namespace is None:
            return self.api.get_cluster_custom_object(KOPF_GROUP, KOPF_VERSION,
                                                      "clusterkopfpeerings", self.name)
        return self.api.get_namespaced_custom_object(KOPF_GROUP, KOPF_VERSION, self.namespace,
                                                     "kopfpeerings", self.name)
