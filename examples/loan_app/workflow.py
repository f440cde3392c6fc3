"""The loan-application workflow of the original flows demo, typed.

Credit score, then one document signal per required document (each verified by an
activity), a durable cooling-off sleep, a random manager review (``ctx.random()``, so the
same applications are reviewed on every replay), and the disbursement.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, NamedTuple

import msgspec

import flows_core as flows

REQUIRED_DOCUMENTS = ("id-card", "payslip")


class LoanIn(msgspec.Struct):
    application_id: str
    applicant: str
    amount: int


class ScoreIn(msgspec.Struct):
    applicant: str


class Document(msgspec.Struct):
    kind: str
    content: str


class Verification(msgspec.Struct):
    kind: str
    valid: bool
    reason: str = ""


class ManagerDecision(msgspec.Struct):
    approved: bool
    manager: str = "manager"
    note: str = ""


class DisburseIn(msgspec.Struct):
    application_id: str
    applicant: str
    amount: int


class LoanOut(msgspec.Struct):
    application_id: str
    status: str
    """approved, rejected or expired."""
    score: int
    reviewed: bool = False
    reason: str = ""
    transfer_id: str = ""


@dataclass
class Bank:
    """Stand-in for the credit bureau, document checker and payment rails."""

    scores: dict[str, int] = field(default_factory=dict)
    transfers: list[str] = field(default_factory=list)


class LoanActivities(NamedTuple):
    credit_score: flows.Activity[ScoreIn, int]
    verify_document: flows.Activity[Document, Verification]
    disburse: flows.Activity[DisburseIn, str]


def new_activities(bank: Bank) -> LoanActivities:
    @flows.activity("credit-score", retry=flows.RetryPolicy(max_attempts=3))
    async def credit_score(inp: ScoreIn) -> int:
        return bank.scores.get(inp.applicant, 700)

    @flows.activity("verify-document")
    async def verify_document(doc: Document) -> Verification:
        if not doc.content.strip():
            return Verification(kind=doc.kind, valid=False, reason="empty document")
        return Verification(kind=doc.kind, valid=True)

    @flows.activity("disburse", retry=flows.RetryPolicy(max_attempts=5))
    async def disburse(inp: DisburseIn) -> str:
        transfer = f"tr-{inp.application_id}"
        if transfer not in bank.transfers:  # idempotent: a retry never pays twice
            bank.transfers.append(transfer)
        return transfer

    return LoanActivities(credit_score, verify_document, disburse)


def new_workflow(
    acts: LoanActivities,
    *,
    cooling_off: timedelta = timedelta(hours=24),
    document_timeout: timedelta = timedelta(days=7),
    review_probability: float = 0.3,
    min_score: int = 600,
) -> flows.Workflow[LoanIn, LoanOut]:
    """The loan workflow; the keyword arguments are the bank's policy."""

    @flows.workflow("loan-application", version=1)
    async def loan(ctx: flows.WorkflowContext, inp: LoanIn) -> LoanOut:
        score = await ctx.execute(acts.credit_score, ScoreIn(applicant=inp.applicant))
        if score < min_score:
            return LoanOut(
                application_id=inp.application_id,
                status="rejected",
                score=score,
                reason=f"credit score {score} below {min_score}",
            )
        missing = set(REQUIRED_DOCUMENTS)
        while missing:
            doc = await ctx.wait_for_signal("document", Document, timeout=document_timeout)
            if doc is None:
                return LoanOut(
                    application_id=inp.application_id,
                    status="expired",
                    score=score,
                    reason=f"documents missing: {', '.join(sorted(missing))}",
                )
            check = await ctx.execute(acts.verify_document, doc)
            if check.valid:
                missing.discard(doc.kind)
        await ctx.sleep(cooling_off)
        reviewed = ctx.random() < review_probability
        if reviewed:
            decision = await ctx.wait_for_signal("manager-decision", ManagerDecision)
            if not decision.approved:
                return LoanOut(
                    application_id=inp.application_id,
                    status="rejected",
                    score=score,
                    reviewed=True,
                    reason=decision.note or f"declined by {decision.manager}",
                )
        transfer = await ctx.execute(
            acts.disburse,
            DisburseIn(
                application_id=inp.application_id, applicant=inp.applicant, amount=inp.amount
            ),
        )
        return LoanOut(
            application_id=inp.application_id,
            status="approved",
            score=score,
            reviewed=reviewed,
            transfer_id=transfer,
        )

    return loan


DEMO_COOLING_OFF = timedelta(seconds=5)
"""The cooling-off sleep of the demo service (``app.from_env``) and of ``definitions``."""


def definitions() -> list[flows.Workflow[Any, Any] | flows.Activity[Any, Any]]:
    """The loan workflow with the demo service's policy and its activities, for
    ``flows worker --app examples.loan_app.workflow:definitions`` (from the repository's
    root) or ``flows start``/``flows signal --app`` checks."""
    acts = new_activities(Bank())
    return [new_workflow(acts, cooling_off=DEMO_COOLING_OFF), *acts]
