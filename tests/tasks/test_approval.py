"""The approval form: an unanswered pause ends on the safe side, and the run still completes."""

from __future__ import annotations

import threading
import time

from prefect import flow, task
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateName,
)
from prefect.flow_runs import resume_flow_run

from agentic_mlops.tasks import approval


@task
def carried_on() -> str:
    return "rolled back"


@flow
def asks_a_person(timeout: int) -> tuple[str | None, str]:
    answer = approval.wait_for_person(approval.CanaryApproval, "a canary", timeout, "probe", 1)
    return (answer.decision if answer else None), carried_on()


def history(state) -> list[tuple[str, str | None]]:
    with get_client(sync_client=True) as client:
        states = client.read_flow_run_states(state.state_details.flow_run_id)
    return [(s.name, s.message) for s in states]


def test_an_unanswered_form_carries_on_and_the_run_completes():
    state = asks_a_person(2, return_state=True)
    assert state.is_completed(), state.message
    assert state.result() == (None, "rolled back")
    names = [name for name, _ in history(state)]
    assert names[-3:] == ["Paused", "Running", "Completed"], names
    assert "no answer within 2 s" in history(state)[-2][1]


def test_an_answered_form_returns_the_answer_without_a_forced_resume():
    answered = []

    def person() -> None:
        deadline = time.monotonic() + 60
        with get_client(sync_client=True) as client:
            while not answered and time.monotonic() < deadline:
                paused = client.read_flow_runs(
                    flow_filter=FlowFilter(name=FlowFilterName(any_=["asks-a-person"])),
                    flow_run_filter=FlowRunFilter(
                        state=FlowRunFilterState(name=FlowRunFilterStateName(any_=["Paused"]))
                    ),
                )
                for run in paused:
                    resume_flow_run(run.id, run_input={"decision": "approve", "comment": ""})
                    answered.append(run.id)
                time.sleep(0.3)

    thread = threading.Thread(target=person, daemon=True)
    thread.start()
    state = asks_a_person(60, return_state=True)
    thread.join(timeout=5)
    assert state.is_completed() and state.result() == ("approve", "rolled back")
    assert not any("no answer" in (message or "") for _, message in history(state))
