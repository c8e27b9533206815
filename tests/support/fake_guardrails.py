"""A fake Bedrock Guardrails runtime speaking ``ApplyGuardrail``'s real wire format
(moto has no ApplyGuardrail).

``POST /guardrail/{guardrailIdentifier}/version/{guardrailVersion}/apply``, rest-json,
as in the Bedrock Runtime API reference: the body ``{source, content: [{text: {text}}
| {image: {format, source: {bytes}}}], outputScope?}``; the answer ``{usage, action,
actionReason, outputs: [{text}], assessments: [...]}``; errors with
``x-amzn-ErrorType``. botocore's own serializer and parser run on every call.

Each guardrail is a small policy evaluated like Bedrock does: denied topics and custom
words block (the answer's output is the guardrail's blocked message), content filters
fire on trigger words, e-mail addresses are anonymized (``{EMAIL}`` in the output)::

    with FakeGuardrails({"gr-1": Policy(words=["badword"])}) as fake:
        client = boto3.client("bedrock-runtime", endpoint_url=fake.url, ...)
"""

from __future__ import annotations

import base64
import json
import re
import threading
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.support.eventstream import Fault, ScriptedFake, aws_error

__all__ = ["FakeGuardrails", "Fault", "Policy", "Seen"]

STATUS = {
    "ValidationException": 400,
    "AccessDeniedException": 403,
    "ResourceNotFoundException": 404,
    "ThrottlingException": 429,
    "ServiceQuotaExceededException": 400,
    "InternalServerException": 500,
}
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+")


@dataclass
class Policy:
    """A guardrail's configuration (a tiny subset of Bedrock's)."""

    words: list[str] = field(default_factory=list)  # custom words: BLOCKED
    topics: dict[str, list[str]] = field(default_factory=dict)  # denied topic -> triggers
    filters: dict[str, list[str]] = field(default_factory=dict)  # VIOLENCE -> triggers
    anonymize_email: bool = True
    blocked_input: str = "Sorry, the model cannot answer this question."
    blocked_output: str = "Sorry, the model cannot answer this question."
    versions: tuple[str, ...] = ("DRAFT", "1")


@dataclass
class Seen:
    guardrail_id: str
    version: str
    headers: dict[str, str]
    body: Any
    done: threading.Event = field(default_factory=threading.Event)


class FakeGuardrails(ScriptedFake[Fault, Seen]):
    def __init__(self, guardrails: dict[str, Policy]) -> None:
        self.guardrails = guardrails
        app = Starlette(routes=[Route(
            "/guardrail/{guardrail_id}/version/{version}/apply", self._apply, methods=["POST"],
        )])
        super().__init__(app, "fake-guardrails")

    async def _apply(self, request: Request) -> Response:
        raw = await request.body()
        seen = Seen(request.path_params["guardrail_id"], request.path_params["version"],
                    dict(request.headers), json.loads(raw) if raw else None)
        fault = self._record(seen)
        if fault is not None:
            return fault.response(STATUS)
        policy = self.guardrails.get(seen.guardrail_id)
        if policy is None:
            return aws_error(404, "ResourceNotFoundException",
                             {"message": f"Guardrail {seen.guardrail_id} not found"})
        if seen.version not in policy.versions:
            return aws_error(400, "ValidationException",
                             {"message": f"Guardrail version {seen.version} is not valid"})
        body = seen.body or {}
        if body.get("source") not in ("INPUT", "OUTPUT"):
            return aws_error(400, "ValidationException",
                             {"message": "1 validation error detected: source"})
        return JSONResponse(_evaluate(policy, body), headers={"x-amzn-RequestId": "fake-gr"})


def _evaluate(policy: Policy, body: dict[str, Any]) -> dict[str, Any]:
    texts = [b["text"]["text"] for b in body.get("content", []) if "text" in b]
    images = [b["image"] for b in body.get("content", []) if "image" in b]
    for image in images:  # botocore sends blob members base64-encoded
        base64.b64decode(image["source"]["bytes"], validate=True)
    text = "\n".join(texts)
    lowered = text.lower()
    assessment: dict[str, Any] = {}
    blocked = False
    words = [{"match": w, "action": "BLOCKED", "detected": True}
             for w in policy.words if w.lower() in lowered]
    if words:
        assessment["wordPolicy"] = {"customWords": words, "managedWordLists": []}
        blocked = True
    topics = [{"name": name, "type": "DENY", "action": "BLOCKED", "detected": True}
              for name, triggers in policy.topics.items()
              if any(t.lower() in lowered for t in triggers)]
    if topics:
        assessment["topicPolicy"] = {"topics": topics}
        blocked = True
    filters = [{"type": kind, "confidence": "HIGH", "filterStrength": "HIGH",
                "action": "BLOCKED", "detected": True}
               for kind, triggers in policy.filters.items()
               if any(t.lower() in lowered for t in triggers)]
    if filters:
        assessment["contentPolicy"] = {"filters": filters}
        blocked = True
    emails = _EMAIL.findall(text) if policy.anonymize_email else []
    if emails:
        assessment["sensitiveInformationPolicy"] = {
            "piiEntities": [{"match": e, "type": "EMAIL", "action": "ANONYMIZED",
                             "detected": True} for e in emails],
            "regexes": [],
        }
    intervened = blocked or bool(emails)
    if blocked:
        outputs = [{"text": policy.blocked_input if body["source"] == "INPUT"
                    else policy.blocked_output}]
    elif emails:
        outputs = [{"text": _EMAIL.sub("{EMAIL}", t)} for t in texts]
    else:
        outputs = []
    return {
        "usage": {"topicPolicyUnits": 1, "contentPolicyUnits": 1, "wordPolicyUnits": 1,
                  "sensitiveInformationPolicyUnits": 1,
                  "sensitiveInformationPolicyFreeUnits": 0,
                  "contextualGroundingPolicyUnits": 0},
        "action": "GUARDRAIL_INTERVENED" if intervened else "NONE",
        "actionReason": ("Guardrail blocked." if blocked else
                         "Guardrail masked." if emails else "No action."),
        "outputs": outputs,
        "assessments": [assessment] if assessment else [],
        "guardrailCoverage": {"textCharacters": {"guarded": len(text), "total": len(text)}},
    }
