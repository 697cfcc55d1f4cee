"""Events about ModelDeployments: which transitions deserve one, their names, and posting them once.

A transition's Events are named before the status that records them is written (the names go
into status.pendingEvents with it); they are posted after the write, and the list is cleared.
After a crash in between the next reconcile posts what is still pending under the same names,
and the API server stores an Event of a given name once: every transition is announced once.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from modeldeploy_operator.kube import KubernetesError, KubeStorage, Manifest
from modeldeploy_operator.metrics import OperatorMetrics

EVENT_COMPONENT = "modeldeploy-operator"
_logger = logging.getLogger("modeldeploy.events")


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event to post about the ModelDeployment."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str
    name: str | None = None
    """The Event's object name when it announces a transition (fixed before the status write)."""


def event_name(owner_name: str, owner_uid: str, decided_at: datetime, index: int, event: Event) -> str:
    """The name of the Event announcing a transition: the same wherever and however often the
    operator posts it, so the API server stores it once."""
    key = f"{owner_uid}/{decided_at.isoformat()}/{index}/{event.reason}/{event.message}"
    return f"{owner_name}.{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def pending_list(events: list[Event]) -> list[Manifest] | None:
    """The Events as status.pendingEvents holds them (None for none)."""
    return [
        {"name": event.name, "type": event.type, "reason": event.reason, "message": event.message[:1024]}
        for event in events
    ] or None


def _condition(status: Mapping[str, Any] | None, kind: str, key: str = "status") -> str:
    for condition in (status or {}).get("conditions", []):
        if condition.get("type") == kind:
            return str(condition.get(key, ""))
    return ""


# Ready False for these reasons is the stable Deployment catching up with a change (a resize
# while a canary runs, say), not news when it is Ready again with the same model.
_ROUTINE_NOT_READY = frozenset({"DeploymentUpdating", "RollingOut"})


def transition_events(previous: Mapping[str, Any] | None, current: Mapping[str, Any]) -> list[Event]:
    """Events for the changes people care about: a model became Ready (a new one, or one that
    was failing or missing), the ModelDeployment became Stalled."""
    events = []
    serving_again = (previous or {}).get("stable") == current.get("stable") and _condition(
        previous, "Ready", "reason"
    ) in _ROUTINE_NOT_READY
    if (
        _condition(current, "Ready") == "True"
        and _condition(previous, "Ready") != "True"
        and not serving_again
    ):
        stable = current.get("stable", {})
        events.append(
            Event(
                "Normal", "Ready", f"Model {stable.get('uri')} (version {stable.get('version')}) is serving"
            )
        )
    if _condition(current, "Stalled") == "True" and (
        _condition(previous, "Stalled") != "True"
        or _condition(previous, "Stalled", "message") != _condition(current, "Stalled", "message")
    ):
        events.append(
            Event(
                "Warning", _condition(current, "Stalled", "reason"), _condition(current, "Stalled", "message")
            )
        )
    return events


class Announcer:
    """Posts Events about ModelDeployments; one that cannot be posted is logged and counted."""

    def __init__(self, storage: KubeStorage, metrics: OperatorMetrics) -> None:
        self._storage = storage
        self._metrics = metrics

    async def announce(self, body: Mapping[str, Any], events: list[Event]) -> bool:
        """Posts the Events a status write recorded as pending, then clears them from the status
        (keeping those that could not be posted, for the next reconcile to post). False when some
        could not be posted: the caller reconciles again soon."""
        if not events:
            return True
        unposted = await self.post(body, events)
        metadata = body["metadata"]
        try:
            await self._storage.patch_status(
                metadata["name"], metadata["namespace"], {"pendingEvents": pending_list(unposted)}, None
            )
        except KubernetesError as error:
            # They stay pending: the next reconcile posts them again under the same names.
            _logger.warning(
                "Could not clear the posted Events of ModelDeployment %s/%s: %s",
                metadata["namespace"],
                metadata["name"],
                error,
            )
        return not unposted

    async def post(self, body: Mapping[str, Any], events: list[Event]) -> list[Event]:
        """Posts each Event; one that cannot be posted is logged and counted, never silently lost.
        Returns those that could not be posted."""
        metadata = body["metadata"]
        unposted = []
        for event in events:
            try:
                posted = await self._storage.post_event(
                    body, event.type, event.reason, event.message, EVENT_COMPONENT, event.name
                )
            except KubernetesError as error:
                unposted.append(event)
                self._metrics.events.labels(event.type, event.reason, "failed").inc()
                _logger.warning(
                    "Could not post the %s Event %s about ModelDeployment %s/%s (%s): %s",
                    event.type,
                    event.reason,
                    metadata["namespace"],
                    metadata["name"],
                    event.message,
                    error,
                )
            else:
                self._metrics.events.labels(
                    event.type, event.reason, "posted" if posted else "repeated"
                ).inc()
        return unposted
