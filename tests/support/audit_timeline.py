"""Who wrote what, and when, as kube-apiserver's audit log tells it: the honest record of a test in
which several operator replicas compete for one Lease.

The operator's own metrics and logs say what each replica meant to do; the audit log says what the
API server accepted, in the order it received it, whatever was delayed on the way.
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
    """One write the API server carried out (answered with a 2xx)."""

    user: str
    verb: str
    resource: str
    namespace: str
    name: str
    received: datetime
    answered: datetime

    def describe(self) -> str:
        return f"{self.verb} {self.resource} {self.namespace}/{self.name} by {self.user} at {self.received}"


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value)


def accepted_writes(events: Iterable[Mapping[str, Any]], users: Iterable[str]) -> list[Write]:
    """The writes by these users that the API server carried out, in the order it received them.

    A write it refused (a 409 from a resourceVersion precondition, a 403) changed nothing and is left
    out: refusing a stale writer is exactly the server's part in keeping one leader.
    """
    wanted = set(users)
    writes = []
    for event in events:
        if event.get("stage") != "ResponseComplete" or event.get("verb") not in WRITE_VERBS:
            continue
        user = event.get("user", {}).get("username", "")
        code = event.get("responseStatus", {}).get("code", 0)
        if user not in wanted or not 200 <= code < 300:
            continue
        ref = event.get("objectRef", {})
        writes.append(
            Write(
                user=user,
                verb=event["verb"],
                resource=ref.get("resource", ""),
                namespace=ref.get("namespace", ""),
                name=ref.get("name", ""),
                received=_time(event["requestReceivedTimestamp"]),
                answered=_time(event["stageTimestamp"]),
            )
        )
    return sorted(writes, key=lambda write: write.received)


def is_lease_write(write: Write, lease_namespace: str, lease_name: str) -> bool:
    return (write.resource, write.namespace, write.name) == ("leases", lease_namespace, lease_name)


def overlapping_leaders(writes: list[Write], lease_namespace: str, lease_name: str) -> list[str]:
    """Every write that breaks "one writer at a time", described; empty when there is none.

    The writes split into turns of one writer each. A turn may begin only with the new writer's write
    of the Lease (it took the Lease over), and only once every write of the turn before was answered:
    a write of the previous writer received after the turn changed, or still being carried out when it
    did, is two leaders writing.
    """
    problems = []
    writer: str | None = None
    last_answered: datetime | None = None
    for write in writes:
        if write.user != writer:
            if writer is not None and not is_lease_write(write, lease_namespace, lease_name):
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
    """Who wrote in turn, and how many writes each turn had: [(user, count), ...]."""
    result: list[tuple[str, int]] = []
    for write in writes:
        if result and result[-1][0] == write.user:
            result[-1] = (write.user, result[-1][1] + 1)
        else:
            result.append((write.user, 1))
    return result
