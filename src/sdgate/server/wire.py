"""Wire types the Stability, OpenAI and Hugging Face dialects share: strict, bounded numbers that
also read from multipart form fields, and the OpenAPI description of a multipart body.

JSON bodies are strict where a client would be surprised by coercion: ``seed: false`` is not 0,
``"samples": "2"`` is not 2, NaN and Infinity are never numbers. A multipart form carries only
strings, so ``validate_form`` parses a form's numbers and booleans before the same strict checks.
"""

from __future__ import annotations

import math
from functools import cache
from typing import Annotated, Any, TypeVar, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from sdgate.core.errors import InvalidRequest

Model = TypeVar("Model", bound=BaseModel)

# The largest integer every JSON parser reads exactly (a double's 53 bits): the bound of seeds a
# dialect takes as JSON numbers, so that no client rounds one on the way.
MAX_JSON_INT = 2**53 - 1
# Free-form JSON a dialect accepts as is (A1111's script_args, comments, override_settings): its
# shape is bounded where it enters, since later code walks it (pydantic's serializer gives up past
# a few hundred levels, after the job exists).
MAX_JSON_DEPTH = 16
MAX_JSON_VALUES = 10_000
# Prompts are text: no NUL characters (the server refuses them in every prompt).
NO_NUL = "^[^\\x00]*$"
# Only the words: a form cannot tell the number 0 from false, so "0" is a number, never a boolean.
_TRUE, _FALSE = ("true",), ("false",)

# An integer: never a bool, a string or a float.
Int = Annotated[int, Strict()]
# A finite number: never NaN, Infinity, a bool or a string; integers are numbers.
Float = Annotated[float, Strict(), Field(allow_inf_nan=False)]
Bool = Annotated[bool, Strict()]


class WireModel(BaseModel):
    """A dialect's request model: unknown fields kept (the services ignore them), and a JSON number
    with no fraction (``2.0``, an integer in JSON Schema) read as the integer a field wants."""

    model_config = ConfigDict(extra="allow")

    @field_validator("*", mode="before")
    @classmethod
    def _integral_floats(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, float) and value.is_integer() and _wants_int(cls, info.field_name or ""):
            return int(value)
        return value


@cache
def _wants_int(model: type[BaseModel], name: str) -> bool:
    field = model.model_fields.get(name)
    if field is None:
        return False
    return _is_int(field.annotation)


def _is_int(annotation: Any) -> bool:
    """``int``, ``Int``, ``Int | None``."""
    if annotation is int:
        return True
    args = get_args(annotation)
    if get_origin(annotation) is Annotated:
        args = args[:1]
    return any(_is_int(arg) for arg in args)


def validate_form(model: type[Model], data: dict[str, Any]) -> Model:
    """Form fields validated like a JSON body, raising ``InvalidRequest`` naming the first bad field.

    A form carries only strings: those of fields the schema calls integer, number or boolean are
    parsed first (a value that does not parse is left for the strict check to name).
    """
    try:
        return model.model_validate(_parse_strings(data, inline_schema(model)))
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = [str(p) for p in first["loc"]]
        field = ".".join(loc) or "body"
        raise InvalidRequest(f"{field}: {first['msg']}", field=loc[0] if loc else "body") from None


def _parse_strings(value: Any, schema: dict[str, Any]) -> Any:
    if isinstance(value, dict):
        props = schema.get("properties", {})
        return {k: _parse_strings(v, props.get(k, {})) for k, v in value.items()}
    branches = [schema, *schema.get("anyOf", ())]
    if isinstance(value, list):
        items = next((b["items"] for b in branches if isinstance(b.get("items"), dict)), {})
        return [_parse_strings(v, items) for v in value]
    if not isinstance(value, str):
        return value
    types = {b.get("type") for b in branches}
    text = value.strip()
    try:
        if "integer" in types:
            return int(text)
        if "number" in types:
            return float(text)
    except ValueError:
        return value
    if "boolean" in types and text.lower() in (*_TRUE, *_FALSE):
        return text.lower() in _TRUE
    return value


# -- routes ---------------------------------------------------------------------------------------


# -- OpenAPI ----------------------------------------------------------------------------------------


@cache
def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``model``'s JSON schema with its ``$defs`` inlined (a multipart body cannot point at
    ``components``, which FastAPI builds only from the models it knows)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                target = dict(defs[ref.removeprefix("#/$defs/")])
                extra = {k: v for k, v in node.items() if k != "$ref"}
                return resolve({**target, **extra})
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return dict(resolve(schema))


def _not_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A form field is sent or left out, never null: ``anyOf [X, null]`` becomes X."""
    branches = [b for b in schema.get("anyOf", ()) if b.get("type") != "null"]
    if "anyOf" not in schema or len(branches) != 1:
        return schema
    rest = {k: v for k, v in schema.items() if k not in ("anyOf", "default")}
    return {**branches[0], **rest}


def multipart_body(
    fields: dict[str, Any],
    *,
    files: dict[str, str],
    required: tuple[str, ...] = (),
    drop: tuple[str, ...] = (),
) -> dict[str, Any]:
    """``openapi_extra`` declaring a ``multipart/form-data`` request body.

    ``fields`` is an inlined JSON schema of the text fields (``inline_schema``), ``files`` maps each
    file field to its description, ``required`` names required fields beyond the schema's own and
    ``drop`` removes fields the form spells differently (Stability's ``text_prompts[0][text]``).
    """
    properties = {k: _not_null(v) for k, v in fields.get("properties", {}).items() if k not in drop}
    for name, description in files.items():
        properties[name] = {"type": "string", "format": "binary", "description": description}
    schema: dict[str, Any] = {
        "type": "object",
        "properties": properties,
        "required": sorted({*(r for r in fields.get("required", ()) if r not in drop), *required}),
    }
    if fields.get("additionalProperties"):
        schema["additionalProperties"] = True
    encoding = {name: {"contentType": "image/png, image/jpeg, image/webp"} for name in files}
    return {
        "requestBody": {
            "required": True,
            "content": {"multipart/form-data": {"schema": schema, "encoding": encoding}},
        }
    }


def check_json_tree(value: Any) -> Any:
    """``value`` if it nests at most ``MAX_JSON_DEPTH`` levels, holds at most ``MAX_JSON_VALUES``
    values and only finite numbers; else a ValueError (a 422 naming the field)."""
    count, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        count += 1
        if depth > MAX_JSON_DEPTH:
            raise ValueError(f"nested more than {MAX_JSON_DEPTH} levels deep")
        if count > MAX_JSON_VALUES:
            raise ValueError(f"holds more than {MAX_JSON_VALUES} values")
        if isinstance(item, dict):
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list | tuple):
            stack.extend((child, depth + 1) for child in item)
        elif isinstance(item, float) and not math.isfinite(item):
            raise ValueError("numbers must be finite")
    return value


JsonTree = AfterValidator(check_json_tree)
