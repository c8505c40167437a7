"""The support app's side of recovery's ports (`recovery.ports`), plugged in at app start."""

from __future__ import annotations

from recovery import ports
from recovery.domain import events

from .services import (
    case_noted,
    case_route_if_needed,
    queue_item_settle_for_case,
    queue_settle_closed,
)


def _case_classified(event: events.CaseClassified) -> None:
    case_route_if_needed(case=event.case, at=event.at)  # the escalation queue's policy


def _case_closed(event) -> None:
    queue_item_settle_for_case(case=event.case, at=event.at)


def _case_noted(event: events.CaseNoted) -> None:
    case_noted(case=event.case, at=event.at)


def connect() -> None:
    ports.subscribe(events.CaseClassified, _case_classified)
    ports.subscribe(events.CaseNoted, _case_noted)
    # A person was working it: the queue item leaves with the case's result once the close
    # commits (not at the support pass's next sweep). After the commit, not under the case's
    # lock: an agent's action locks the item, then the case.
    for closed in events.CASE_CLOSED:
        ports.subscribe(closed, _case_closed, on_commit=True)
    ports.queue_settle_closed.plug(queue_settle_closed)
