"""POST /v1/route: the dry run. Same auth, body and headers as a completion; nothing is forwarded."""

from __future__ import annotations

import orjson
from aiohttp import web

from ..decide import decide
from ..explain import route_json
from ..state import STATE
from ..validation import parse_json_body, validate_chat_request


async def dry_run(request: web.Request) -> web.Response:
    state = request.app[STATE]
    principal = await state.keyring.authenticate(request.headers)
    body = parse_json_body(await request.read())
    validate_chat_request(body)
    snapshot = state.runtime.current
    decision = decide(body, request.headers, principal.tenant, snapshot, state.unavailable())
    answer = route_json(decision.classification, decision.plan, principal.tenant, snapshot.catalog,
                        snapshot.policy_version, decision.all_unavailable)
    return web.json_response(answer, dumps=lambda value: orjson.dumps(value).decode())
