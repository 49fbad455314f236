"""Prefect automations that route agentic-mlops events to people.

`install_escalation_webhook(url)` saves a webhook notification block and an automation that
sends to it whenever a drift check escalates (`agentic-mlops.drift.escalated`): the subject
names the model, the body carries the triage's rationale, severity, batch and ledger id.
Installing again replaces both, so it is safe to run on every deploy.
"""

from __future__ import annotations

from contextlib import suppress
from uuid import UUID

from prefect.automations import Automation
from prefect.blocks.notifications import CustomWebhookNotificationBlock
from prefect.events.actions import SendNotification
from prefect.events.schemas.automations import EventTrigger, Posture

ESCALATION_BLOCK = "agentic-mlops-escalations"
ESCALATION_AUTOMATION = "agentic-mlops: drift escalated -> webhook"
ESCALATED_EVENT = "agentic-mlops.drift.escalated"


def install_escalation_webhook(url: str) -> tuple[UUID, UUID]:
    """Save the webhook block and (re)create the escalation automation.

    Args:
        url: Where to POST the notification (`{"subject": ..., "body": ...}` as JSON).

    Returns:
        The block document id and the automation id.
    """
    block_id = CustomWebhookNotificationBlock(
        name=ESCALATION_BLOCK,
        url=url,
        json_data={"subject": "{{subject}}", "body": "{{body}}"},
    ).save(ESCALATION_BLOCK, overwrite=True)
    with suppress(ValueError):  # none installed yet
        Automation.read(name=ESCALATION_AUTOMATION).delete()
    automation = Automation(
        name=ESCALATION_AUTOMATION,
        description="Tell a person when a drift check escalates.",
        trigger=EventTrigger(
            expect={ESCALATED_EVENT},
            match={"prefect.resource.id": "agentic-mlops.model.*"},
            posture=Posture.Reactive,
            threshold=1,
        ),
        actions=[
            SendNotification(
                block_document_id=block_id,
                subject="agentic-mlops: drift escalated for {{ event.resource.name }}",
                body=(
                    "Severity {{ event.payload.severity }}, batch {{ event.payload.batch_id }}: "
                    "{{ event.payload.rationale }} (ledger {{ event.payload.ledger_id }})"
                ),
            )
        ],
    ).create()
    return block_id, automation.id
