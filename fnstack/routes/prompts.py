"""Prompts (Llama Stack's /v1/prompts): versioned prompt templates.

Llama Stack clients update with PUT (llama-stack-client 0.7) and older ones with POST:
both are served.
"""

from __future__ import annotations

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from fnstack.api.prompts import (
    CreatePromptRequest,
    Prompt,
    PromptList,
    SetDefaultVersionRequest,
    UpdatePromptRequest,
)
from fnstack.routes import json_response, principal, service
from fnstack.services.prompts import PromptsService

router = APIRouter(tags=["prompts"])


async def _svc(request: Request) -> PromptsService:
    svc: PromptsService = await service(request, "prompts")
    return svc


@router.post("/v1/prompts", response_model=Prompt)
async def create_prompt(body: CreatePromptRequest, request: Request) -> Response:
    svc = await _svc(request)
    return json_response(await svc.create(body, principal(request)))


@router.get("/v1/prompts", response_model=PromptList)
async def list_prompts(request: Request) -> Response:
    svc = await _svc(request)
    return json_response(await svc.list_prompts(principal(request)))


@router.get("/v1/prompts/{prompt_id}", response_model=Prompt)
async def retrieve_prompt(prompt_id: str, request: Request,
                          version: int | None = Query(default=None, ge=1)) -> Response:
    svc = await _svc(request)
    return json_response(await svc.retrieve(prompt_id, version, principal(request)))


@router.put("/v1/prompts/{prompt_id}", response_model=Prompt)
@router.post("/v1/prompts/{prompt_id}", response_model=Prompt, include_in_schema=False)
async def update_prompt(prompt_id: str, body: UpdatePromptRequest,
                        request: Request) -> Response:
    svc = await _svc(request)
    return json_response(await svc.update(prompt_id, body, principal(request)))


@router.put("/v1/prompts/{prompt_id}/set-default-version", response_model=Prompt)
@router.post("/v1/prompts/{prompt_id}/set-default-version", response_model=Prompt,
             include_in_schema=False)
async def set_default_version(prompt_id: str, body: SetDefaultVersionRequest,
                              request: Request) -> Response:
    svc = await _svc(request)
    return json_response(await svc.set_default_version(prompt_id, body.version,
                                                       principal(request)))


@router.get("/v1/prompts/{prompt_id}/versions", response_model=PromptList)
async def list_versions(prompt_id: str, request: Request) -> Response:
    svc = await _svc(request)
    return json_response(await svc.list_versions(prompt_id, principal(request)))


@router.delete("/v1/prompts/{prompt_id}", status_code=204)
async def delete_prompt(prompt_id: str, request: Request) -> Response:
    svc = await _svc(request)
    await svc.delete(prompt_id, principal(request))
    return Response(status_code=204)
