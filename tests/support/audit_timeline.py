"""Who wrote what, and when, as kube-apiserver's audit log tells it: the honest record of a test in
which several operator replicas compete for one Lease.

The operator's own metrics and logs say what each replica meant to do; the audit log says what
reached the API server and what it answered, in the order it received it, whatever was delayed on
the way.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})


def operator_writes_policy(operator_namespace: str) -> dict[str, Any]:
    """An audit policy recording every write by a service account of the operator's namespace (the
    Lease there; ModelDeployments, children and Events anywhere) at the Metadata level, once answered."""
    return {
        "apiVersion": "audit.k8s.io/v1",
        "kind": "Policy",
        "omitStages": ["RequestReceived"],
        "rules": [
            {
                "level": "Metadata",
                "userGroups": [f"system:serviceaccounts:{operator_namespace}"],
                "verbs": sorted(WRITE_VERBS),
            },
            {"level": "None"},
        ],
    }


@dataclass(frozen=True)
class Write:
    """One write request that reached the API server, and its answer's HTTP status."""

    user: str
    verb: str
    resource: str
    namespace: str
    name: str
    code: int
    received: datetime
    answered: datetime

    @property
    def accepted(self) -> bool:
        return 200 <= self.code < 300

    def describe(self) -> str:
        return (
            f"{self.verb} {self.resource} {self.namespace}/{self.name} by {self.user} at {self.received}"
            f" (answered {self.code})"
        )


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value)


def write_requests(events: Iterable[Mapping[str, Any]], users: Iterable[str]) -> list[Write]:
    """The write requests by these users that reached the API server, in the order it received them,
    accepted or refused: a write the server refused (a 409 from a resourceVersion precondition) was
    still sent by a replica that believed it might write."""
    wanted = set(users)
    writes = []
    for event in events:
        if event.get("stage") != "ResponseComplete" or event.get("verb") not in WRITE_VERBS:
            continue
        user = event.get("user", {}).get("username", "")
        if user not in wanted:
            continue
        ref = event.get("objectRef", {})
        writes.append(
            Write(
                user=user,
                verb=event["verb"],
                resource=ref.get("resource", ""),
                namespace=ref.get("namespace", ""),
                name=ref.get("name", ""),
                code=event.get("responseStatus", {}).get("code", 0),
                received=_time(event["requestReceivedTimestamp"]),
                answered=_time(event["stageTimestamp"]),
            )
        )
    return sorted(writes, key=lambda write: write.received)


def is_lease_write(write: Write, lease_namespace: str, lease_name: str) -> bool:
    return (write.resource, write.namespace, write.name) == ("leases", lease_namespace, lease_name)


def overlapping_leaders(writes: list[Write], lease_namespace: str, lease_name: str) -> list[str]:
    """Every write that breaks "one writer at a time", described; empty when there is none.

    The writes split into turns of one writer each. A turn begins only with the new writer's accepted
    write of the Lease (it took the Lease over), and only once every write of the turn before was
    answered. During a turn, any other replica's write is two leaders writing, even one the server
    refused: only a precondition stopped it, and a write without one (an apply, an Event) would have
    gone through. Refused Lease writes are candidates losing the race for the Lease, as they should.
    """
    problems = []
    writer: str | None = None
    last_answered: datetime | None = None
    for write in writes:
        lease = is_lease_write(write, lease_namespace, lease_name)
        if lease and not write.accepted:
            continue
        if write.user != writer:
            if writer is not None and not lease:
                problems.append(f"{write.describe()} while {writer} held the Lease")
                continue
            if last_answered is not None and last_answered > write.received:
                problems.append(
                    f"{write.describe()} took the Lease while a write of {writer} was still being carried"
                    f" out (answered at {last_answered})"
                )
            writer = write.user
        last_answered = write.answered if last_answered is None else max(last_answered, write.answered)
    return problems


def turns(writes: list[Write]) -> list[tuple[str, int]]:
    """Who wrote in turn, and how many accepted writes each turn had: [(user, count), ...]."""
    result: list[tuple[str, int]] = []
    for write in writes:
        if not write.accepted:
            continue
        if result and result[-1][0] == write.user:
            result[-1] = (write.user, result[-1][1] + 1)
        else:
            result.append((write.user, 1))
    return result
