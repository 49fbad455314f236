"""How far each model can be trusted at each decision point, from the ledger's attributions.

Per decision point and configured model: how many cases, how many the model itself answered,
how often its own action was the policy's, where they disagreed and whether the decision that
acted was later proved right (`lifecycle_report.verdict` on the ledger outcome), fallbacks to
the policy, guardrail overrides, tokens and latency. Run in `shadow` mode, this is how a team
earns the right to let a model act: the policy acts while the model's answers are measured.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from agentic_mlops.tasks import ledger
from agentic_mlops.tasks.lifecycle_report import verdict

SHADOW_REASON = "shadow mode: the policy's decision acts"


class Disagreement(BaseModel):
    """One case where the model's own action was not the policy's."""

    ledger_id: str
    created_at: str
    model_action: str | None
    policy_action: str | None
    acted: str = Field(description="The action that stood.")
    acted_proved: str | None = Field(
        description="`good` or `bad` once the ledger outcome shows it, else None."
    )


class AgentFigures(BaseModel):
    """One decision point under one configured model."""

    decision_point: str
    model: str
    modes: list[str]
    cases: int
    answered: int = Field(description="Cases the model itself answered (no failure, no fallback).")
    agreed: int
    agreement: float | None = Field(description="agreed / answered; None if it never answered.")
    fallbacks: int = Field(description="Runs that failed or fell back to the policy.")
    ungrounded: int = Field(description="Answers citing evidence the model never read.")
    overridden: int = Field(description="Answers a guardrail or floor changed.")
    input_tokens: int = Field(description="Tokens of the cases the model answered.")
    output_tokens: int
    mean_latency_seconds: float
    disagreements: list[Disagreement]


def agent_figures(entries: list[ledger.LedgerEntry]) -> list[AgentFigures]:
    """The figures of every (decision point, configured model) in `entries` with attribution."""
    groups: dict[tuple[str, str], list[ledger.LedgerEntry]] = {}
    for entry in entries:
        if entry.attribution:
            key = (entry.decision_point, entry.attribution.get("configured_model", "?"))
            groups.setdefault(key, []).append(entry)
    figures = []
    for (point, model), group in sorted(groups.items()):
        attributions = [e.attribution for e in group]
        answered = [a for a in attributions if a.get("agreed") is not None]
        agreed = sum(1 for a in answered if a["agreed"])
        reasons = [
            [r for r in a.get("overridden_by", []) if r != SHADOW_REASON] for a in attributions
        ]
        figures.append(
            AgentFigures(
                decision_point=point,
                model=model,
                modes=sorted({a.get("mode", "llm") for a in attributions}),
                cases=len(group),
                answered=len(answered),
                agreed=agreed,
                agreement=round(agreed / len(answered), 3) if answered else None,
                fallbacks=sum(
                    1
                    for a in attributions
                    if a.get("mode") != "policy"
                    and model != "policy"
                    and a.get("answered_by") in (None, "policy")
                ),
                ungrounded=sum(1 for rs in reasons if any("ungrounded" in r for r in rs)),
                overridden=sum(
                    1
                    for a, rs in zip(attributions, reasons, strict=True)
                    if rs and a.get("answered_by") not in (None, "policy")
                ),
                input_tokens=sum(a.get("input_tokens", 0) for a in answered),
                output_tokens=sum(a.get("output_tokens", 0) for a in answered),
                mean_latency_seconds=round(
                    sum(a.get("latency_seconds", 0.0) for a in attributions) / len(group), 3
                ),
                disagreements=[
                    Disagreement(
                        ledger_id=e.id,
                        created_at=e.created_at,
                        model_action=e.attribution.get("model_action"),
                        policy_action=e.attribution.get("policy_action"),
                        acted=e.action,
                        acted_proved=verdict(e),
                    )
                    for e in group
                    if e.attribution.get("agreed") is False
                ],
            )
        )
    return figures
