"""Validation of a chat body: every error names the same field, code and message as before
the checks were reorganised (expected values recorded from the previous implementation),
and of several bad fields the same one is reported whatever the body's key order."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from gateway.errors import GatewayError
from gateway.validation import validate_chat_request

M = [{"role": "user", "content": "hi"}]

CASES: list[tuple[dict[str, Any], tuple[str, str, str] | None]] = [
    ({'messages': M},
     ('model', 'missing_required_parameter', "Missing required parameter: 'model'.")),
    ({'model': 3, 'messages': M},
     ('model', 'invalid_type', "Invalid type for 'model': expected a non-empty string, got a number.")),
    ({'model': ' \t', 'messages': M},
     ('model', 'invalid_type', "Invalid type for 'model': expected a non-empty string, got a string.")),
    ({'model': '\u2003', 'messages': M},
     ('model', 'invalid_type', "Invalid type for 'model': expected a non-empty string, got a string.")),
    ({'model': 'm'},
     ('messages', 'missing_required_parameter', "Missing required parameter: 'messages'.")),
    ({'model': 'm', 'messages': {}},
     ('messages', 'invalid_type', "Invalid type for 'messages': expected an array, got an object.")),
    ({'model': 'm', 'messages': []},
     ('messages', 'empty_array', "'messages' must contain at least one message.")),
    ({'model': 'm', 'messages': [{'role': 'user', 'content': 'hi'}, 'x']},
     ('messages[1]', 'invalid_type', "Invalid type for 'messages[1]': expected an object, got a string.")),
    ({'model': 'm', 'messages': [{'role': 'user', 'content': 'hi'}, {'content': 'x'}]},
     ('messages[1].role', 'missing_required_parameter', "Missing required parameter: 'messages[1].role'.")),
    ({'model': 'm', 'messages': [{'role': 'user', 'content': 'hi'}, {'role': 'bot', 'content': 'x'}]},
     ('messages[1].role', 'invalid_value', "Invalid value for 'messages[1].role': 'bot'. Supported values are: 'system', 'developer', 'user', 'assistant', 'tool' and 'function'.")),
    ({'model': 'm', 'messages': [{'role': 'user'}]},
     ('messages[0].content', 'missing_required_parameter', "Missing required parameter: 'messages[0].content'.")),
    ({'model': 'm', 'messages': [{'role': 'user', 'content': 5}]},
     ('messages[0].content', 'invalid_type', "Invalid type for 'messages[0].content': expected a string or an array of content parts, got a number.")),
    ({'model': 'm', 'messages': [{'role': 'user', 'content': [{'type': 'text'}]}]},
     ('messages[0].content[0].text', 'invalid_type', "Invalid type for 'messages[0].content[0].text': expected a string, got null.")),
    ({'model': 'm', 'messages': [{'role': 'user', 'content': [{'type': 'image_url', 'image_url': {}}]}]},
     ('messages[0].content[0].image_url.url', 'invalid_type', "Invalid type for 'messages[0].content[0].image_url.url': expected a string, got null.")),
    ({'model': 'm', 'messages': [{'role': 'user', 'content': [{'type': 'video'}]}]},
     ('messages[0].content[0].type', 'invalid_value', "Invalid value for 'messages[0].content[0].type': 'video'. Supported values are: 'text', 'image_url', 'input_audio', 'file' and 'refusal'.")),
    ({'model': 'm', 'messages': [{'role': 'tool', 'content': 'x'}]},
     ('messages[0].tool_call_id', 'missing_required_parameter', "Missing required parameter: 'messages[0].tool_call_id' (a string) for a tool message.")),
    ({'model': 'm', 'messages': [{'role': 'assistant', 'content': None}]},
     None),
    ({'model': 'm', 'messages': [{'role': 'assistant', 'tool_calls': [{'id': 'c'}]}]},
     None),
    ({'model': 'm', 'messages': M, 'max_tokens': 0},
     ('max_tokens', 'invalid_value', "Invalid value for 'max_tokens': 0. It must be at least 1.")),
    ({'model': 'm', 'messages': M, 'max_tokens': True},
     ('max_tokens', 'invalid_type', "Invalid type for 'max_tokens': expected an integer, got a boolean.")),
    ({'model': 'm', 'messages': M, 'n': 129},
     ('n', 'invalid_value', "Invalid value for 'n': 129. It must be at most 128.")),
    ({'model': 'm', 'messages': M, 'temperature': 2.5},
     ('temperature', 'invalid_value', "Invalid value for 'temperature': 2.5. It must be between 0 and 2.")),
    ({'model': 'm', 'messages': M, 'top_p': 'x'},
     ('top_p', 'invalid_type', "Invalid type for 'top_p': expected a number, got a string.")),
    ({'model': 'm', 'messages': M, 'stream': 1},
     ('stream', 'invalid_type', "Invalid type for 'stream': expected a boolean, got a number.")),
    ({'model': 'm', 'messages': M, 'stream_options': {'include_usage': True}},
     ('stream_options', 'invalid_value', "'stream_options' is only allowed when 'stream' is true.")),
    ({'model': 'm', 'messages': M, 'stream': True, 'stream_options': {'include_usage': 1}},
     ('stream_options.include_usage', 'invalid_type', "Invalid type for 'stream_options.include_usage': expected a boolean, got a number.")),
    ({'model': 'm', 'messages': M, 'stop': ['a', 'b', 'c', 'd', 'e']},
     ('stop', 'invalid_value', "'stop' accepts at most 4 sequences.")),
    ({'model': 'm', 'messages': M, 'stop': [1]},
     ('stop', 'invalid_type', "Invalid type for 'stop': expected a string or an array of strings, got an array.")),
    ({'model': 'm', 'messages': M, 'tools': [{'type': 'function', 'function': {'name': ''}}]},
     ('tools[0].function.name', 'missing_required_parameter', "Missing required parameter: 'tools[0].function.name'.")),
    ({'model': 'm', 'messages': M, 'tool_choice': 'sometimes'},
     ('tool_choice', 'invalid_value', "Invalid value for 'tool_choice': 'sometimes'. Supported values are: 'none', 'auto', 'required' or an object naming a function.")),
    ({'model': 'm', 'messages': M, 'tool_choice': {'function': {}}},
     ('tool_choice.function.name', 'missing_required_parameter', "Missing required parameter: 'tool_choice.function.name'.")),
    ({'model': 'm', 'messages': M, 'functions': 1.5},
     ('functions', 'invalid_type', "Invalid type for 'functions': expected an array, got a number.")),
    ({'model': 'm', 'messages': M, 'functions': [{'name': 'f'}, 'g']},
     ('functions[1]', 'invalid_type', "Invalid type for 'functions[1]': expected an object, got a string.")),
    ({'model': 'm', 'messages': M, 'functions': [{'parameters': {}}]},
     ('functions[0].name', 'missing_required_parameter', "Missing required parameter: 'functions[0].name'.")),
    ({'model': 'm', 'messages': M, 'function_call': 'required'},
     ('function_call', 'invalid_value', "Invalid value for 'function_call': 'required'. Supported values are: 'none', 'auto' or an object naming a function.")),
    ({'model': 'm', 'messages': M, 'function_call': True},
     ('function_call', 'invalid_type', "Invalid type for 'function_call': expected a string or an object, got a boolean.")),
    ({'model': 'm', 'messages': M, 'function_call': {'name': ''}},
     ('function_call.name', 'missing_required_parameter', "Missing required parameter: 'function_call.name'.")),
    ({'model': 'm', 'messages': M, 'functions': [{'name': 'f'}], 'function_call': {'name': 'f'}}, None),
    ({'model': 'm', 'messages': M, 'response_format': {'type': 'yaml'}},
     ('response_format.type', 'invalid_value', "Invalid value for 'response_format.type': 'yaml'. Supported values are: 'text', 'json_object' and 'json_schema'.")),
    ({'model': 'm', 'messages': M, 'response_format': {'type': 'json_schema', 'json_schema': {}}},
     ('response_format.json_schema.name', 'missing_required_parameter', "Missing required parameter: 'response_format.json_schema.name'.")),
    ({'model': 'm', 'messages': M, 'metadata': []},
     ('metadata', 'invalid_type', "Invalid type for 'metadata': expected an object, got an array.")),
    ({'model': 'm', 'messages': M, 'metadata': [], 'max_tokens': 0},
     ('max_tokens', 'invalid_value', "Invalid value for 'max_tokens': 0. It must be at least 1.")),
    ({'model': 'm', 'messages': M, 'max_tokens': 0, 'metadata': []},
     ('max_tokens', 'invalid_value', "Invalid value for 'max_tokens': 0. It must be at least 1.")),
    ({'model': 'm', 'messages': M, 'tool_choice': 1, 'tools': 1},
     ('tools', 'invalid_type', "Invalid type for 'tools': expected an array, got a number.")),
    ({'model': 'm', 'messages': M, 'stream': 'yes', 'temperature': 9, 'stop': 3},
     ('temperature', 'invalid_value', "Invalid value for 'temperature': 9. It must be between 0 and 2.")),
    ({'metadata': [], 'messages': [], 'model': 1},
     ('model', 'invalid_type', "Invalid type for 'model': expected a non-empty string, got a number.")),
]


@pytest.mark.parametrize(("body", "expected"), CASES)
def test_the_error_names_the_field(body: dict[str, Any], expected: tuple[str, str, str] | None) -> None:
    if expected is None:
        validate_chat_request(body)
        return
    with pytest.raises(GatewayError) as raised:
        validate_chat_request(body)
    error = raised.value
    assert (error.param, error.code, error.message) == expected
    assert error.status == 400


BAD_OPTIONAL = {
    "max_tokens": 0,
    "n": 129,
    "temperature": "hot",
    "stream": "yes",
    "stream_options": [],
    "stop": 3,
    "tools": {},
    "tool_choice": 1,
    "functions": {},
    "function_call": 1,
    "response_format": "json",
    "metadata": [],
}


@pytest.mark.parametrize("names", list(itertools.combinations(BAD_OPTIONAL, 3)))
def test_of_several_bad_fields_the_first_in_the_checks_order_is_reported(names: tuple[str, ...]) -> None:
    for order in itertools.permutations(names):
        body = {"model": "m", "messages": M, **{name: BAD_OPTIONAL[name] for name in order}}
        with pytest.raises(GatewayError) as raised:
            validate_chat_request(body)
        assert raised.value.param.split(".")[0] == names[0]  # BAD_OPTIONAL lists them in the checks' order


@pytest.mark.parametrize(("body", "param"), [
    ({"model": "m", "messages": [{"role": ["user"], "content": "x"}]}, "messages[0].role"),
    ({"model": "m", "messages": [{"role": {"a": 1}, "content": "x"}]}, "messages[0].role"),
    ({"model": "m", "messages": [{"role": "user", "content": [{"type": ["text"], "text": "x"}]}]},
     "messages[0].content[0].type"),
    ({"model": "m", "messages": M, "response_format": {"type": {"json": True}}}, "response_format.type"),
])
def test_an_unhashable_value_where_a_name_is_expected_is_a_400_naming_the_field(body: dict, param: str) -> None:
    with pytest.raises(GatewayError) as raised:
        validate_chat_request(body)
    assert raised.value.status == 400 and raised.value.param == param


def test_an_assistant_turn_may_send_tool_calls_as_null_or_an_array_but_nothing_else() -> None:
    for calls in (None, [], [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]):
        validate_chat_request({"model": "m", "messages": [{"role": "assistant", "content": "x", "tool_calls": calls}]})
    for calls in (5, True, "calls", {"id": "c"}):
        with pytest.raises(GatewayError) as raised:
            validate_chat_request({"model": "m", "messages": [{"role": "assistant", "content": "x", "tool_calls": calls}]})
        assert raised.value.status == 400 and raised.value.param == "messages[0].tool_calls"
