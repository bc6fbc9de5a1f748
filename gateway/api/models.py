"""GET /v1/models: the catalog's models and the virtual ones, in the OpenAI list shape."""

from __future__ import annotations

from aiohttp import web

from ..errors import GatewayError
from ..state import STATE

VIRTUAL_MODELS = ("auto", "auto:cost", "auto:balanced", "auto:quality")
_CREATED = 1_700_000_000  # the catalog has no creation dates; a fixed value keeps the list stable


async def list_models(request: web.Request) -> web.Response:
    state = request.app[STATE]
    await state.keyring.authenticate(request.headers)
    catalog = state.runtime.current.catalog
    data = [
        {"id": name, "object": "model", "created": _CREATED, "owned_by": "gateway"} for name in VIRTUAL_MODELS
    ]
    data += [
        {"id": model_id, "object": "model", "created": _CREATED, "owned_by": deployments[0].provider}
        for model_id, deployments in catalog.by_id.items()
    ]
    return web.json_response({"object": "list", "data": data})


async def get_model(request: web.Request) -> web.Response:
    state = request.app[STATE]
    await state.keyring.authenticate(request.headers)
    name = request.match_info["model"]
    catalog = state.runtime.current.catalog
    if name in VIRTUAL_MODELS:
        return web.json_response({"id": name, "object": "model", "created": _CREATED, "owned_by": "gateway"})
    found = catalog.resolve(name)
    if not found:
        raise GatewayError(404, f"The model '{name}' does not exist in this gateway's catalog.", param="model", code="model_not_found")
    return web.json_response({"id": name, "object": "model", "created": _CREATED, "owned_by": found[0].provider})
