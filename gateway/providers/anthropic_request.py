"""OpenAI chat request -> Anthropic Messages request body.

Choices where the two APIs differ:
- `system`/`developer` messages, wherever they sit, become the top-level `system`, joined
  by a blank line.
- `tool` messages become `tool_result` blocks of a user turn; consecutive same-role
  turns are merged because Anthropic wants user and assistant to alternate.
- `response_format`: the classic Messages API has no JSON mode. json_object adds a
  system instruction. json_schema with an object schema and no client tools adds the
  instruction plus a forced tool (`JSON_TOOL`) whose input_schema is the schema; the
  tool's input comes back as the message content (see anthropic.py). With client tools
  present (forcing our tool would stop the model from calling theirs) or a non-object
  schema (input_schema must be an object), the schema goes into the instruction instead.
- `n` > 1 is rejected (bad_request): Anthropic answers with one message per request,
  and silently answering with one choice would break a client that indexes choices[1].
- `temperature` is clamped to Anthropic's [0, 1] (OpenAI allows up to 2). When both
  `temperature` and `top_p` are given, only `temperature` is sent: recent Claude models
  reject the pair ("cannot both be specified for this model").
- `max_tokens` is required by Anthropic: the adapter's default applies when absent.
- `user` -> `metadata.user_id`; `parallel_tool_calls: false` -> `disable_parallel_tool_use`.
- Tool-call ids are rewritten to Anthropic's allowed alphabet (a conversation may have
  started on another provider); the rewrite is deterministic, so tool_use and
  tool_result ids still pair up.
- Dropped, no Anthropic equivalent: frequency_penalty, presence_penalty, logit_bias,
  logprobs, top_logprobs, seed, service_tier, store, modalities, audio, prediction,
  reasoning_effort, web_search_options, OpenAI `metadata`, the legacy assistant
  `function_call` message field. `stream_options` is read by the stream translator.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Mapping

import orjson

from .base import Deployment
from .translate import (
    ToolChoice,
    assistant_calls,
    assistant_texts,
    bad_request,
    choice_count,
    file_data_of,
    function_tools,
    image_url_of,
    max_output_tokens,
    messages_of,
    number,
    parse_data_url,
    response_format,
    stop_sequences,
    system_prompt,
    text_of,
    tool_choice,
)

JSON_TOOL = "json_response"
JSON_OBJECT_INSTRUCTION = "Respond with a single valid JSON object and nothing else: no prose, no Markdown code fences."
JSON_SCHEMA_INSTRUCTION = "Respond with valid JSON and nothing else: no prose, no Markdown code fences."
JSON_TOOL_INSTRUCTION = f"Give your final answer by calling the {JSON_TOOL} tool; its input is the answer."

_TOOL_ID_OK = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_EMPTY_SCHEMA = {"type": "object", "properties": {}}


def anthropic_body(body: Mapping[str, Any], deployment: Deployment, *, stream: bool, default_max_tokens: int) -> dict[str, Any]:
    messages = messages_of(body)
    if choice_count(body) > 1:
        raise bad_request("'n' greater than 1 is not supported by the Anthropic Messages API.")
    out: dict[str, Any] = {
        "model": deployment.upstream_model,
        "max_tokens": max_output_tokens(body) or default_max_tokens,
        "messages": _turns(messages),
    }
    system_parts = [system_prompt(messages)]
    tools = [_tool(tool.name, tool.description, tool.parameters) for tool in function_tools(body)]
    choice = _tool_choice(tool_choice(body), {tool["name"] for tool in tools}) if tools else None
    if tools and body.get("parallel_tool_calls") is False:
        choice = choice or {"type": "auto"}
        if choice["type"] != "none":
            choice["disable_parallel_tool_use"] = True

    fmt = response_format(body)
    if fmt is not None:
        if fmt.kind == "json_schema" and not tools and fmt.schema and fmt.schema.get("type") == "object":
            tools = [_tool(JSON_TOOL, "Return the final answer as this JSON object.", fmt.schema)]
            choice = {"type": "tool", "name": JSON_TOOL}
            system_parts.append(JSON_TOOL_INSTRUCTION)
        elif fmt.kind == "json_schema":
            schema = orjson.dumps(fmt.schema).decode()
            system_parts.append(f"{JSON_SCHEMA_INSTRUCTION} The JSON must conform to this JSON Schema: {schema}")
        else:
            system_parts.append(JSON_OBJECT_INSTRUCTION)

    system = "\n\n".join(part for part in system_parts if part)
    if system:
        out["system"] = system
    if tools:
        out["tools"] = tools
    if choice:
        out["tool_choice"] = choice
    stops = stop_sequences(body)
    if stops:
        out["stop_sequences"] = stops
    temperature = number(body, "temperature")
    if temperature is not None:
        out["temperature"] = min(max(temperature, 0.0), 1.0)
    top_p = number(body, "top_p")
    if top_p is not None and temperature is None:
        out["top_p"] = top_p
    top_k = body.get("top_k")  # not OpenAI, but clients pass it through extra_body
    if isinstance(top_k, int) and not isinstance(top_k, bool) and top_k > 0:
        out["top_k"] = top_k
    user = body.get("user")
    if isinstance(user, str) and user:
        out["metadata"] = {"user_id": user}
    if stream:
        out["stream"] = True
    return out


def anthropic_tool_id(call_id: str) -> str:
    """An OpenAI tool-call id in Anthropic's id alphabet, stable for the same input."""
    if _TOOL_ID_OK.match(call_id):
        return call_id
    return "toolu_" + hashlib.sha256(call_id.encode()).hexdigest()[:32]


def _tool(name: str, description: str | None, parameters: dict[str, Any] | None) -> dict[str, Any]:
    tool: dict[str, Any] = {"name": name}
    if description:
        tool["description"] = description
    tool["input_schema"] = parameters or _EMPTY_SCHEMA
    return tool


def _tool_choice(choice: ToolChoice | None, names: set[str]) -> dict[str, Any] | None:
    if choice is None:
        return None
    if choice.mode == "auto":
        return {"type": "auto"}
    if choice.mode == "none":
        return {"type": "none"}
    if choice.mode == "required":
        return {"type": "any"}
    if choice.name not in names:
        raise bad_request(f"'tool_choice' names the function '{choice.name}', which is not in 'tools'.")
    return {"type": "tool", "name": choice.name}


def _turns(messages: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    turns: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        role, where = message["role"], f"messages[{index}]"
        if role in ("system", "developer"):
            continue
        if role == "user":
            blocks = _user_blocks(message.get("content"), f"{where}.content")
        elif role == "assistant":
            blocks = _assistant_blocks(message, where)
        elif role == "tool":
            role, blocks = "user", [_tool_result(message, where)]
        else:
            raise bad_request(f"{where}.role '{role}' is not supported (use system, developer, user, assistant or tool).")
        if not blocks:
            continue  # Anthropic rejects empty turns; dropping one keeps the rest valid
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    for turn in turns:
        blocks = turn["content"]
        if len(blocks) == 1 and blocks[0]["type"] == "text":
            turn["content"] = blocks[0]["text"]
    return turns


def _user_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise bad_request(f"{where} must be a string or an array of content parts.")
    blocks = []
    for index, part in enumerate(content):
        part_where = f"{where}[{index}]"
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise bad_request(f"{part_where}.text must be a string.")
            if part["text"]:
                blocks.append({"type": "text", "text": part["text"]})
        elif kind == "image_url":
            url = image_url_of(part, part_where)
            inline = parse_data_url(url, f"{part_where}.image_url.url")
            source = (
                {"type": "base64", "media_type": inline.media_type, "data": inline.data}
                if inline
                else {"type": "url", "url": url}
            )
            blocks.append({"type": "image", "source": source})
        elif kind == "file":
            inline = file_data_of(part, part_where)
            if inline.media_type != "application/pdf":
                raise bad_request(f"{part_where}.file: Anthropic accepts PDF files only, not {inline.media_type}.")
            blocks.append({"type": "document", "source": {"type": "base64", "media_type": inline.media_type, "data": inline.data}})
        else:
            raise bad_request(f"{part_where}.type '{kind}' is not supported by Anthropic (use text, image_url or file).")
    return blocks


def _assistant_blocks(message: Mapping[str, Any], where: str) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = [{"type": "text", "text": text} for text in assistant_texts(message, where)]
    for call in assistant_calls(message, where):
        blocks.append({"type": "tool_use", "id": anthropic_tool_id(call.id), "name": call.name, "input": call.arguments})
    return blocks


def _tool_result(message: Mapping[str, Any], where: str) -> dict[str, Any]:
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str) or not call_id:
        raise bad_request(f"{where}.tool_call_id must be a non-empty string.")
    result: dict[str, Any] = {"type": "tool_result", "tool_use_id": anthropic_tool_id(call_id)}
    text = text_of(message.get("content"), f"{where}.content")
    if text:
        result["content"] = text
    return result
