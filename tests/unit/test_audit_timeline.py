"""Reading the audit log of a leader-election test: which writes count, and what is two leaders."""

from __future__ import annotations

from typing import Any

from audit_timeline import overlapping_leaders, turns, write_requests

A = "system:serviceaccount:modeldeploy-system:a"
B = "system:serviceaccount:modeldeploy-system:b"
LEASE = ("modeldeploy-system", "modeldeploy-operator")


def event(
    user: str, received: float, answered: float, resource: str = "deployments", code: int = 200, **extra: Any
) -> dict[str, Any]:
    name = LEASE[1] if resource == "leases" else "iris-canary"
    namespace = LEASE[0] if resource == "leases" else "t-1"
    return {
        "stage": "ResponseComplete",
        "verb": extra.get("verb", "patch"),
        "user": {"username": user},
        "objectRef": {"resource": resource, "namespace": namespace, "name": name},
        "responseStatus": {"code": code},
        "requestReceivedTimestamp": f"2026-12-02T20:00:{received:09.6f}Z",
        "stageTimestamp": f"2026-12-02T20:00:{answered:09.6f}Z",
    }


def test_answered_writes_of_the_named_users_count_in_the_order_received() -> None:
    events = [
        event(B, 3.0, 3.1, "leases", verb="update"),
        event(A, 1.0, 1.2),
        event(A, 2.0, 2.1, "leases", code=409, verb="update"),
        {**event(A, 2.5, 2.5), "stage": "RequestReceived"},
        {**event(A, 2.6, 2.7), "verb": "get"},
        event("system:admin", 2.8, 2.9),
    ]
    writes = write_requests(events, [A, B])
    assert [(write.user, write.resource, write.accepted) for write in writes] == [
        (A, "deployments", True),
        (A, "leases", False),
        (B, "leases", True),
    ]


def test_a_handover_through_the_lease_is_one_leader_at_a_time() -> None:
    writes = write_requests(
        [
            event(A, 1.0, 1.1, "leases"),
            event(A, 1.5, 1.6),
            event(B, 5.0, 5.1, "leases"),
            event(B, 5.5, 5.6),
            event(A, 9.0, 9.1, "leases"),  # A took the Lease back after B released it
            event(A, 9.5, 9.6),
        ],
        [A, B],
    )
    assert overlapping_leaders(writes, *LEASE) == []
    assert turns(writes) == [(A, 2), (B, 2), (A, 2)]


def test_a_write_of_the_old_leader_after_the_new_one_took_the_lease_is_found() -> None:
    writes = write_requests(
        [event(A, 1.0, 1.1, "leases"), event(B, 5.0, 5.1, "leases"), event(A, 6.0, 6.1)], [A, B]
    )
    (problem,) = overlapping_leaders(writes, *LEASE)
    assert "by " + A in problem and "while " + B in problem


def test_a_write_of_the_old_leader_refused_by_a_precondition_is_still_two_leaders() -> None:
    writes = write_requests(
        [event(A, 1.0, 1.1, "leases"), event(B, 5.0, 5.1, "leases"), event(A, 6.0, 6.1, code=409)], [A, B]
    )
    (problem,) = overlapping_leaders(writes, *LEASE)
    assert "answered 409" in problem


def test_a_candidate_losing_the_race_for_the_lease_is_no_second_leader() -> None:
    writes = write_requests(
        [event(A, 1.0, 1.1, "leases"), event(B, 2.0, 2.1, "leases", code=409), event(A, 2.5, 2.6)], [A, B]
    )
    assert overlapping_leaders(writes, *LEASE) == []
    assert turns(writes) == [(A, 2)]


def test_a_write_still_being_carried_out_when_the_lease_changes_hands_is_found() -> None:
    writes = write_requests([event(A, 4.0, 5.5), event(B, 5.0, 5.1, "leases")], [A, B])
    (problem,) = overlapping_leaders(writes, *LEASE)
    assert "still being carried out" in problem


def test_a_new_writer_that_starts_without_taking_the_lease_is_found() -> None:
    writes = write_requests([event(A, 1.0, 1.1, "leases"), event(B, 5.0, 5.1)], [A, B])
    assert len(overlapping_leaders(writes, *LEASE)) == 1
