"""Sample values that satisfy a JSON Schema's types: tool arguments, structured output.

Only required properties are filled, which is what a schema promises a consumer. Type
names are matched case-insensitively because Gemini's OpenAPI subset spells them
"STRING", "OBJECT"...
"""

from __future__ import annotations

from typing import Any

_MAX_DEPTH = 8
_STRING_FORMATS = {
    "date": "2024-01-01",
    "date-time": "2024-01-01T00:00:00Z",
    "time": "00:00:00",
    "email": "user@example.com",
    "uri": "https://example.com",
    "uuid": "00000000-0000-4000-8000-000000000000",
}


def sample_value(schema: Any, root: Any = None, depth: int = 0) -> Any:
    """A value of the schema's type; objects get their required properties filled."""
    if root is None:
        root = schema
    if not isinstance(schema, dict) or depth > _MAX_DEPTH:
        return "sample"
    if "$ref" in schema:
        return sample_value(_resolve_ref(root, schema["$ref"]), root, depth + 1)
    if "const" in schema:
        return schema["const"]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    for combinator in ("anyOf", "oneOf", "allOf"):
        options = schema.get(combinator)
        if isinstance(options, list) and options:
            concrete = [o for o in options if _type_of(o) != "null"] or options
            return sample_value(concrete[0], root, depth + 1)

    kind = _type_of(schema)
    if kind == "object":
        properties = schema.get("properties") or {}
        required = schema.get("required") or []
        return {
            name: sample_value(properties.get(name, {}), root, depth + 1)
            for name in required
            if isinstance(name, str)
        }
    if kind == "array":
        count = max(1, _int(schema.get("minItems"), 1))
        item = sample_value(schema.get("items", {}), root, depth + 1)
        return [item] * count
    if kind == "integer":
        return int(_bounded(schema, 1))
    if kind == "number":
        return float(_bounded(schema, 1.5))
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return _STRING_FORMATS.get(str(schema.get("format", "")), "sample")


def _type_of(schema: Any) -> str:
    if not isinstance(schema, dict):
        return "string"
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if str(k).lower() != "null"), "null")
    if isinstance(kind, str):
        return kind.lower()
    if "properties" in schema:
        return "object"
    if "items" in schema:
        return "array"
    return "string"


def _resolve_ref(root: Any, ref: Any) -> Any:
    if not isinstance(ref, str) or not ref.startswith("#"):
        return {}
    node = root
    for part in ref.lstrip("#/").split("/"):
        if not part:
            continue
        if not isinstance(node, dict) or part not in node:
            return {}
        node = node[part]
    return node


def _bounded(schema: dict[str, Any], preferred: float) -> float:
    value = preferred
    minimum = schema.get("minimum")
    maximum = schema.get("maximum")
    if isinstance(minimum, (int, float)) and value < minimum:
        value = minimum
    if isinstance(maximum, (int, float)) and value > maximum:
        value = maximum
    return value


def _int(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default
