"""POST /v1/route: the dry run. Same auth, body and headers as a completion; nothing is forwarded."""

from __future__ import annotations

import orjson
from aiohttp import web

from ..decide import decide
from ..explain import classification_json, plan_json
from ..state import STATE
from ..validation import parse_json_body, validate_chat_request


async def dry_run(request: web.Request) -> web.Response:
    state = request.app[STATE]
    principal = await state.keyring.authenticate(request.headers)
    body = parse_json_body(await request.read())
    validate_chat_request(body)
    snapshot = state.runtime.current
    decision = decide(body, request.headers, principal.tenant, snapshot, state.unavailable())
    return web.json_response(
        {
            "object": "gateway.route",
            "tenant": principal.tenant,
            "classification": classification_json(decision.classification),
            "plan": plan_json(decision.plan, decision.classification, snapshot.catalog),
            "policy_version": snapshot.policy_version,
            # true when every allowed deployment's breaker is open: the plan shown is what
            # would run once they recover; a completion now gets the route's static step
            "all_unavailable": decision.all_unavailable,
        },
        dumps=lambda value: orjson.dumps(value).decode(),
    )
