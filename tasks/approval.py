"""A person's approval, asked through a Prefect form, and recorded as the person's decision.

Every flow that acts (drift check, lifecycle, canary) asks here when the approval mode says a
person decides: the run pauses with a form whose description carries the decision, its
confidence and rationale, the evidence that mattered, links to the artifacts and the MLflow
run, and the deadline. The answer is required (no pre-filled choice); no answer by the deadline
means the safe side (nothing is done, or the canary rolls back).

The answer is a decision of its own in the ledger (`human_approval`, decided by `person`), so
a rejection is never read as the agent having been wrong: the agent's entry only points to it.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from prefect.runtime import flow_run
from prefect.states import Running
from pydantic import Field

from agentic_mlops.decisions import CanaryEvidence, PromotionAction, advances_to_full
from agentic_mlops.settings import Settings
from agentic_mlops.tasks import ledger

HUMAN = "person"
DECISION_POINT = "human_approval"
CanaryAnswer = Literal["approve", "reject", "extend"]


class Approval(RunInput):
    """A person's answer before a retrain or rollback is carried out."""

    decision: Literal["approve", "reject"] = Field(
        description="approve: carry it out now; reject: do nothing (the decision is escalated)."
    )
    comment: str = Field(default="", description="Why, for the decision ledger.")


class CanaryApproval(RunInput):
    """A person's answer to a paused canary."""

    decision: CanaryAnswer = Field(
        description="approve: go on (more traffic, or promote at the last step); reject: roll "
        "back now; extend: stay at this weight and analyse again."
    )
    comment: str = Field(default="", description="Why, for the decision ledger.")


def deadline_line(timeout_seconds: int, on_silence: str) -> str:
    """When the form stops waiting, in UTC, and what silence means."""
    until = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=timeout_seconds)
    return (
        f"**Answer by {until:%Y-%m-%d %H:%M:%S} UTC** (in {timeout_seconds} s). "
        f"No answer by then: {on_silence}."
    )


def wait_for_person(
    form: type[RunInput], description: str, timeout_seconds: int, key: str, poll_seconds: int = 10
) -> RunInput | None:
    """Pause the run with the form; the answer, or None when nobody answered in time.

    A pause that times out leaves the run `Paused` on the server, which then refuses every later
    state ("never resumed") and would mark `Failed` a run that goes on to the safe side as
    designed: the run is set `Running` again first, saying why.
    """
    try:
        return pause_flow_run(
            wait_for_input=form.with_initial_data(description=description),
            timeout=timeout_seconds,
            poll_interval=poll_seconds,
            key=key,
        )
    except FlowPauseTimeout:
        get_run_logger().warning("no answer to the approval form within %d s", timeout_seconds)
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(
                flow_run.get_id(),
                Running(message=f"no answer within {timeout_seconds} s: the safe side follows"),
                force=True,
            )
        return None
    except Exception as error:  # a resume without input
        get_run_logger().warning("no answer to the approval form (%s)", type(error).__name__)
        return None


def record_answer(
    asked: ledger.LedgerEntry,
    decision: str,
    comment: str,
    settings: Settings,
    asked_action: str | None = None,
) -> ledger.LedgerEntry:
    """Record a person's answer (or `no answer`) as their own decision, and point the agent's
    entry to it."""
    answer = ledger.record_agent_decision(
        DECISION_POINT,
        {"asked_about": asked.id, "decision": decision, "at": ledger.now()},
        flow_run.get_id(),
        settings,
        model_name=asked.model_name,
        model_version=asked.model_version,
        action=decision,
        rationale=comment or None,
        evidence={"asked_about": asked.id, "agent_action": asked_action or asked.action},
        agent_model=HUMAN,
    )
    ledger.record_outcome(
        asked.id,
        {"human": decision, "human_comment": comment, "human_decision_id": answer.id},
        settings,
    )
    return answer


def ask_before_acting(
    asked: ledger.LedgerEntry,
    description: str,
    timeout_seconds: int,
    settings: Settings,
) -> tuple[bool, str]:
    """With approval mode `all`, a person approves the decision before it is carried out.

    Returns whether to carry it out, and why (recorded in the ledger as the person's decision).
    """
    if settings.approval_mode != "all":
        return True, f"approval mode {settings.approval_mode}: no approval needed"
    get_run_logger().info(
        "approval mode all: waiting up to %d s for a person to approve %s",
        timeout_seconds,
        asked.action,
    )
    text = (
        description
        + "\n\n"
        + deadline_line(timeout_seconds, "nothing is done and the decision is escalated")
    )
    answer = wait_for_person(Approval, text, timeout_seconds, f"approve-{asked.id}")
    if answer is None:
        record_answer(asked, "no answer", f"no answer within {timeout_seconds} s", settings)
        return False, f"no answer within {timeout_seconds} s"
    record_answer(asked, answer.decision, answer.comment, settings)
    return answer.decision == "approve", f"{answer.decision}: {answer.comment}".strip(": ")


def canary_gate(
    action: PromotionAction,
    evidence: CanaryEvidence,
    asked: ledger.LedgerEntry,
    settings: Settings,
) -> PromotionAction:
    """The humans-first mode over the promotion agent's action at a canary step.

    `all`: a promotion, or the last increase (to 100%), waits for a person. `none`: nobody is
    asked, so an unclear step rolls back. `risky` (default): the agent's guardrails already
    send a promotion or rollback below the confidence threshold to a person. A changed action
    is added to the agent's ledger entry.
    """
    gated = action
    if settings.approval_mode == "all" and advances_to_full(action, evidence):
        gated = "ask_human"
    elif settings.approval_mode == "none" and action == "ask_human":
        gated = "rollback"
    if gated != action:
        get_run_logger().info(
            "approval mode %s: %s becomes %s", settings.approval_mode, action, gated
        )
        ledger.record_outcome(
            asked.id, {"approval_mode": settings.approval_mode, "action": gated}, settings
        )
    return gated
