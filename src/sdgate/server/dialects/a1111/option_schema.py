"""The JSON Schema of A1111's options, from ``option_table``: what ``POST /options`` and
``override_settings`` accept, stated in the OpenAPI document (``check_value`` is the same rule)."""

from __future__ import annotations

from typing import Any

from sdgate.server.dialects.a1111.option_table import (
    MAX_LIST,
    MAX_NAME,
    MAX_NUMBER,
    MAX_TEXT,
    OPTIONS,
    Kind,
    OptionSpec,
)

# Accepted and not checked: saved by name lookups (a checkpoint or VAE that is not there is a 404 /
# 400), or ignored (explanation texts, the hash that follows the checkpoint, restricted options).
LOOKED_UP = frozenset({"sd_model_checkpoint", "sd_vae"})


def option_schema(spec: OptionSpec) -> dict[str, Any]:
    """One option's value, as ``option_table.check_value`` accepts it."""
    schema: dict[str, Any]
    if spec.kind is Kind.HTML:
        return {"description": "explanation text: accepted and ignored"}
    if spec.key in LOOKED_UP:
        schema = {"type": "string", "minLength": 1, "maxLength": MAX_NAME}
    elif spec.kind is Kind.BOOL:
        schema = {"type": "boolean"}
    elif spec.kind in (Kind.STR, Kind.CHOICE):
        schema = {"type": "string", "maxLength": MAX_TEXT}
        if spec.choices is not None:
            schema["enum"] = list(spec.choices)
    elif spec.kind is Kind.LIST:
        items: dict[str, Any] = {"type": "string", "maxLength": MAX_TEXT}
        if spec.choices is not None:
            items["enum"] = list(spec.choices)
        schema = {"type": "array", "items": items, "maxItems": MAX_LIST}
    else:
        schema = {"type": "integer" if spec.kind is Kind.INT else "number"}
        schema["minimum"] = spec.minimum if spec.minimum is not None else -MAX_NUMBER
        schema["maximum"] = spec.maximum if spec.maximum is not None else MAX_NUMBER
    if spec.default is None:
        schema = {"anyOf": [schema, {"type": "null"}]}
    return schema


def options_body_schema(ignored: frozenset[str]) -> dict[str, Any]:
    """``POST /options``: any subset of the options (the whole ``GET`` dict too); ``ignored`` keys
    take any value. A key A1111 1.10 lacks is a 422."""
    properties = {
        spec.key: ({"description": "accepted and ignored"} if spec.key in ignored else option_schema(spec))
        for spec in OPTIONS
    }
    return {"type": "object", "properties": properties, "additionalProperties": False}


def options_response_schema() -> dict[str, Any]:
    """``GET /options``: every option, numbers served as A1111 serves them (an int option with a
    non-zero default as a float)."""
    properties: dict[str, Any] = {}
    for spec in OPTIONS:
        schema = option_schema(spec) if spec.kind is not Kind.HTML else {}
        if spec.key in LOOKED_UP or spec.key == "sd_checkpoint_hash":  # null: no model yet
            schema = {"type": ["string", "null"]}
        if spec.wire_as_float:
            schema = {"type": "number"}
        properties[spec.key] = schema
    return {"type": "object", "properties": properties, "required": [spec.key for spec in OPTIONS]}
