"""Validate a ComfyUI API-format prompt as ComfyUI's ``execution.validate_prompt`` does
(``object_info`` and ``Choices`` live in ``info`` and are re-exported here).

The errors are ComfyUI's, word for word (``reference/other_apis.md`` §1.4): a prompt-level error
(``no_prompt``, ``invalid_prompt``, ``prompt_no_outputs``, ``prompt_outputs_failed_validation``)
and, per node, a NodeError ``{"errors", "dependent_outputs", "class_type"}`` whose reasons carry
``input_name``, ``input_config`` and ``received_value``. Output nodes are validated one by one:
those that pass run, those that fail are reported in ``node_errors`` beside them.

Beyond ComfyUI: the graph is bounded (``GraphLimits``: node count, link depth, cycles, sizes,
batches, steps, text, LoRAs, ControlNets) and walked without recursion, so a hostile prompt is
refused in time linear in its size; our limits tighten the ranges (``value_bigger_than_max`` names
our maximum) or, for values derived through the graph, fail as ``custom_validation_failed`` naming
the setting; a link to a missing node or output (``bad_linked_input``) or a cycle
(``dependency_cycle``, ComfyUI's execution-time words) is a reason on the node that holds it; NaN
and infinities are ``invalid_input_type``; a SaveImage ``filename_prefix`` that leaves the output
folder fails here rather than when the node runs. Received values are echoed JSON-safe (no NaN) and
cut short.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sdgate.core.comfy import shapes
from sdgate.core.comfy.info import Choices, combo_values, input_config, object_info
from sdgate.core.comfy.limits import GraphLimits
from sdgate.core.comfy.nodes import CONTROLNET_APPLY, NODES, InputSpec

__all__ = ["Choices", "GraphInvalid", "GraphLimits", "ValidatedGraph", "object_info", "validate_prompt"]

_ECHO_CHARS = 256  # received values echoed in an error are cut to this many characters
_INPUT_ANNOTATION = " [input]"  # "x.png [input]": ComfyUI's annotated name for an input-folder file


@dataclass(frozen=True)
class ValidatedGraph:
    graph: dict[str, Any]  # the nodes the outputs need, inputs cast as ComfyUI casts them
    outputs: tuple[str, ...]  # output node ids that passed
    node_errors: dict[str, Any]  # NodeErrors of output branches that failed while others passed
    input_images: tuple[str, ...]  # LoadImage/LoadImageMask file names used
    image_count: int  # images the output nodes will write
    checkpoint: str | None  # the first ckpt_name loaded
    # The largest image or latent whose size is known before it runs (pixels), for memory estimates.
    largest_size: tuple[int, int] | None = None


class GraphInvalid(Exception):
    """A prompt ComfyUI answers with 400; ``body`` is that body, exactly."""

    def __init__(self, body: dict[str, Any]) -> None:
        super().__init__(body["error"]["message"])
        self.body = body


# --- validate_prompt --------------------------------------------------------------------------


def validate_prompt(
    prompt: Any, choices: Choices, limits: GraphLimits, *, targets: Sequence[str] | None = None
) -> ValidatedGraph:
    """Check ``prompt`` (the ``prompt`` field of ``POST /prompt``; None when it was missing) and
    return what runs, or raise ``GraphInvalid`` with ComfyUI's 400 body. Never raises anything else."""
    try:
        return _Validator(prompt, choices, limits, targets).run()
    except GraphInvalid:
        raise
    except Exception as exc:  # a bug here must still answer 400, not 500 with a traceback
        raise GraphInvalid(
            _body(_reason("exception_during_validation", "Exception when validating prompt", _cut(exc)))
        ) from exc


def _reason(type_: str, message: str, details: str, **extra_info: Any) -> dict[str, Any]:
    return {"type": type_, "message": message, "details": details, "extra_info": extra_info}


def _body(error: dict[str, Any], node_errors: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"error": error, "node_errors": node_errors or {}}


def _cut(value: Any) -> str:
    if isinstance(value, int) and value.bit_length() > 2048:  # str() of it may raise, and says nothing
        return f"<an integer of {value.bit_length()} bits>"
    text = str(value)
    if isinstance(value, int):  # numbers are shown whole, as ComfyUI shows them
        return text
    return text if len(text) <= _ECHO_CHARS else text[:_ECHO_CHARS] + "..."


def _echo(value: Any) -> Any:
    """A received value safe to put back in JSON: finite, short, plain."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return _cut(value)
    if isinstance(value, list) and len(value) <= 4 and all(isinstance(v, str | int | float) for v in value):
        return [_echo(v) for v in value]
    return _cut(repr(value))


@dataclass
class _Result:
    valid: bool
    reasons: list[dict[str, Any]]
    inputs: dict[str, Any]  # cast values and normalised links
    links: dict[str, tuple[str, int]]  # input name -> (node id, output index), type-checked
    shapes: tuple[shapes.Shape | None, ...] = ()


class _Validator:
    def __init__(self, prompt: Any, choices: Choices, limits: GraphLimits, targets: Sequence[str] | None):
        self.prompt = prompt
        self.choices = choices
        self.limits = limits
        self.targets = None if targets is None else {str(t) for t in targets if isinstance(t, str | int)}
        self.results: dict[str, _Result] = {}
        self.total_steps = 0
        self.loras = 0
        self.controlnets = 0
        self._option_sets: dict[str, frozenset[str]] = {}
        self._configs: dict[int, list[Any]] = {}  # by id() of the InputSpec: NODES holds them all

    # 1. the prompt as a whole --------------------------------------------------------------
    def run(self) -> ValidatedGraph:
        prompt = self.prompt
        if prompt is None:
            raise GraphInvalid(_body(_reason("no_prompt", "No prompt provided", "No prompt provided")))
        if not isinstance(prompt, dict):
            raise GraphInvalid(
                _body(
                    _reason(
                        "invalid_prompt", "Cannot execute because the prompt is not an object of nodes.", ""
                    )
                )
            )
        if len(prompt) > self.limits.max_nodes:
            message = (
                f"Cannot execute because the prompt has {len(prompt)} nodes; "
                f"the limit is {self.limits.max_nodes}."
            )
            raise GraphInvalid(_body(_reason("invalid_prompt", message, "")))
        outputs = self._outputs(prompt)

        # 2. each output node's branch; the nodes they share are checked once
        good: list[str] = []
        failed: list[tuple[str, list[dict[str, Any]]]] = []
        node_errors: dict[str, Any] = {}
        image_count = 0
        for output in outputs:
            self._walk(output)
            result = self.results[output]
            if result.valid:
                count = self._images_written(result)
                if image_count + count > self.limits.max_batch_images:
                    self._fail(
                        result,
                        "images",
                        f"the prompt would write {image_count + count} images, over "
                        f"the limit of {self.limits.max_batch_images} (max_batch_images)",
                    )
                else:
                    image_count += count
            if result.valid:
                good.append(output)
            else:
                failed.append((output, result.reasons))
                for node_id in self._upstream(output):
                    bad = self.results[node_id]
                    if not bad.valid and bad.reasons:
                        entry = node_errors.setdefault(
                            node_id,
                            {
                                "errors": bad.reasons,
                                "dependent_outputs": [],
                                "class_type": prompt[node_id]["class_type"],
                            },
                        )
                        entry["dependent_outputs"].append(output)
        if not good:
            details = "\n".join(f"{r['message']}: {r['details']}" for _, reasons in failed for r in reasons)
            error = _reason("prompt_outputs_failed_validation", "Prompt outputs failed validation", details)
            raise GraphInvalid(_body(error, node_errors))
        return self._validated(good, node_errors, image_count)

    def _outputs(self, prompt: dict[str, Any]) -> list[str]:
        outputs: list[str] = []
        missing: dict[str, str] = {}
        for node_id, node in prompt.items():
            if not isinstance(node, dict) or "class_type" not in node:
                message = "Cannot execute because a node is missing the class_type property."
                raise GraphInvalid(_body(_reason("invalid_prompt", message, f"Node ID '#{node_id}'")))
            class_type = node["class_type"]
            spec = NODES.get(class_type) if isinstance(class_type, str) else None
            if spec is None:
                missing.setdefault(_cut(class_type), node_id)
            elif spec.output_node and (self.targets is None or node_id in self.targets):
                outputs.append(node_id)
        if missing:
            class_type, node_id = next(iter(missing.items()))
            message = f"Cannot execute because node {class_type} does not exist."
            error = _reason(
                "invalid_prompt", message, f"Node ID '#{node_id}'", missing_node_types=list(missing)
            )
            raise GraphInvalid(_body(error))
        if not outputs:
            raise GraphInvalid(_body(_reason("prompt_no_outputs", "Prompt has no outputs", "")))
        return outputs

    # 3. one branch, depth first without recursion ----------------------------------------
    def _walk(self, root: str) -> None:
        if root in self.results:
            return
        entered: set[str] = set()  # entered and not yet finished: the current path
        stack: list[tuple[str, int, bool]] = [(root, 0, False)]
        while stack:
            node_id, depth, leaving = stack.pop()
            if leaving:
                entered.discard(node_id)
                self._finish(node_id)
                continue
            if node_id in self.results or node_id in entered:
                continue
            result = self._check_inputs(node_id)
            entered.add(node_id)
            stack.append((node_id, depth, True))
            for name, (source, _) in result.links.items():
                if source in entered:
                    self._fail_reason(
                        result,
                        _reason(
                            "dependency_cycle",
                            "Dependency cycle detected",
                            f"{name}, node '{source}' depends on this node's own output",
                            input_name=name,
                        ),
                    )
                elif depth + 1 > self.limits.max_depth:
                    self._fail(
                        result, name, f"the chain of linked nodes is deeper than {self.limits.max_depth}"
                    )
                elif source not in self.results:
                    stack.append((source, depth + 1, False))
            self.results[node_id] = result

    def _finish(self, node_id: str) -> None:
        result = self.results[node_id]
        for source, _ in result.links.values():
            linked = self.results.get(source)  # None: not walked (too deep), already a reason here
            if linked is None or not linked.valid:
                result.valid = False
        if not result.valid:
            return
        class_type = self.prompt[node_id]["class_type"]

        def upstream(name: str) -> shapes.Shape | None:
            source, index = result.links[name]
            out = self.results[source].shapes
            return out[index] if index < len(out) else None

        result.shapes, problems = shapes.infer(
            class_type, result.inputs, upstream, self.limits, self.choices.image_sizes
        )
        for name, problem in problems:
            self._fail(result, name, problem)
        if class_type in ("KSampler", "KSamplerAdvanced") and result.valid:
            self._count_steps(class_type, result)
        if class_type in ("LoraLoader", "LoraLoaderModelOnly"):
            self.loras += 1
            if self.loras > self.limits.max_loras:
                limit = self.limits.max_loras
                self._fail(
                    result,
                    "lora_name",
                    f"the prompt loads {self.loras} LoRAs, over the limit of {limit} (max_loras)",
                )
        if class_type in CONTROLNET_APPLY:
            self.controlnets += 1
            if self.controlnets > self.limits.max_controlnets:
                limit = self.limits.max_controlnets
                self._fail(
                    result,
                    "control_net",
                    f"the prompt applies {self.controlnets} ControlNets, over the limit of {limit} "
                    "(max_controlnets)",
                )

    def _count_steps(self, class_type: str, result: _Result) -> None:
        inputs = result.inputs
        steps = inputs["steps"]
        if class_type == "KSamplerAdvanced":
            steps = max(0, min(inputs["end_at_step"], steps) - inputs["start_at_step"])
        self.total_steps += steps
        if self.total_steps > self.limits.max_total_steps:
            self._fail(
                result,
                "steps",
                f"the prompt's samplers would run {self.total_steps} steps, over the "
                f"limit of {self.limits.max_total_steps} (max_total_steps)",
            )

    def _fail(self, result: _Result, name: str, why: str) -> None:
        self._fail_reason(
            result,
            _reason(
                "custom_validation_failed",
                "Custom validation failed for node",
                f"{name} - {why}",
                input_name=name,
            ),
        )

    @staticmethod
    def _fail_reason(result: _Result, reason: dict[str, Any]) -> None:
        result.valid = False
        result.reasons.append(reason)

    # 4. one node's own inputs -------------------------------------------------------------
    def _check_inputs(self, node_id: str) -> _Result:
        node = self.prompt[node_id]
        spec = NODES[node["class_type"]]
        result = _Result(True, [], {}, {})
        inputs = node.get("inputs", {})
        if not isinstance(inputs, dict):
            self._fail_reason(
                result,
                _reason(
                    "exception_during_validation",
                    "Exception when validating node",
                    "inputs must be an object",
                ),
            )
            return result
        for input_spec in spec.inputs:
            name = input_spec.name
            if name not in inputs:
                if input_spec.required:
                    self._fail_reason(
                        result,
                        _reason("required_input_missing", "Required input is missing", name, input_name=name),
                    )
                continue
            reason = self._check_value(result, input_spec, inputs[name])
            if reason is not None:
                self._fail_reason(result, reason)
        return result

    def _check_value(self, result: _Result, spec: InputSpec, value: Any) -> dict[str, Any] | None:
        name = spec.name
        config = self._config(spec)
        if isinstance(value, list):
            return self._check_link(result, spec, value, config)
        if spec.is_link:  # ComfyUI lets it through, to fail at run time
            return _reason(
                "bad_linked_input",
                "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                name,
                input_name=name,
                input_config=config,
                received_value=_echo(value),
            )
        if isinstance(value, dict) and "__value__" in value:
            value = value["__value__"]
        if spec.type in ("INT", "FLOAT", "STRING", "BOOLEAN"):
            try:
                value = _cast(spec.type, value)
            except (TypeError, ValueError, OverflowError, RecursionError) as exc:
                return _reason(
                    "invalid_input_type",
                    f"Failed to convert an input value to a {spec.type} value",
                    f"{name}, {_cut(value)}, {_cut(exc)}",
                    input_name=name,
                    input_config=config,
                    received_value=_echo(value),
                    exception_message=_cut(exc),
                )
        low, high = spec.min, config[1].get("max")
        if spec.type in ("INT", "FLOAT"):
            if low is not None and value < low:
                return _reason(
                    "value_smaller_than_min",
                    f"Value {_cut(value)} smaller than min of {low}",
                    name,
                    input_name=name,
                    input_config=config,
                    received_value=_echo(value),
                )
            if high is not None and value > high:
                return _reason(
                    "value_bigger_than_max",
                    f"Value {_cut(value)} bigger than max of {high}",
                    name,
                    input_name=name,
                    input_config=config,
                    received_value=_echo(value),
                )
        if (
            spec.type == "STRING"
            and len(value.encode("utf-8", "surrogatepass")) > self.limits.max_prompt_bytes
        ):
            return _reason(
                "custom_validation_failed",
                "Custom validation failed for node",
                f"{name} - the text is over the limit of {self.limits.max_prompt_bytes} bytes "
                "(max_prompt_bytes)",
                input_name=name,
            )
        if name == "filename_prefix" and _escapes(value):  # ComfyUI refuses it when the node runs
            return _reason(
                "custom_validation_failed",
                "Custom validation failed for node",
                f"{name} - Saving image outside the output folder is not allowed.",
                input_name=name,
            )
        if spec.type == "COMBO":
            reason = self._check_combo(spec, value, config)
            if reason is not None:
                return reason
            if spec.options == "input_images":
                value = value.removesuffix(_INPUT_ANNOTATION)
        result.inputs[name] = value
        return None

    def _check_combo(self, spec: InputSpec, value: Any, config: list[Any]) -> dict[str, Any] | None:
        name = spec.name
        if spec.options == "input_images":  # ComfyUI's LoadImage.VALIDATE_INPUTS, not the list
            plain = value.removesuffix(_INPUT_ANNOTATION) if isinstance(value, str) else None
            if plain is None or plain not in self._option_set(spec):
                return _reason(
                    "custom_validation_failed",
                    "Custom validation failed for node",
                    f"{name} - Invalid image file: {_cut(value)}",
                    input_name=name,
                )
            return None
        if isinstance(value, str) and value in self._option_set(spec):
            return None
        options = config[0]
        listed = f"(list of length {len(options)})" if len(options) > 20 else str(options)
        return _reason(
            "value_not_in_list",
            "Value not in list",
            f"{name}: '{_cut(value)}' not in {listed}",
            input_name=name,
            input_config=None if len(options) > 20 else config,
            received_value=_echo(value),
        )

    def _check_link(
        self, result: _Result, spec: InputSpec, value: list[Any], config: list[Any]
    ) -> dict[str, Any] | None:
        name = spec.name

        def bad(message: str, details: str) -> dict[str, Any]:
            return _reason(
                "bad_linked_input",
                message,
                details,
                input_name=name,
                input_config=config,
                received_value=_echo(value),
            )

        if len(value) != 2:
            return bad("Bad linked input, must be a length-2 list of [node_id, slot_index]", name)
        source, index = value
        if isinstance(source, int) and not isinstance(source, bool):
            source = str(source)
        if not isinstance(source, str) or not isinstance(index, int) or isinstance(index, bool):
            return bad("Bad linked input, must be a length-2 list of [node_id, slot_index]", name)
        if source not in self.prompt:
            return bad(
                "Bad linked input, the linked node does not exist",
                f"{name}, node '{_cut(source)}' does not exist",
            )
        linked = NODES[self.prompt[source]["class_type"]]
        if not 0 <= index < len(linked.outputs):
            return bad(
                "Bad linked input, the linked node has no such output",
                f"{name}, node '{source}' ({linked.class_type}) has no output {index}",
            )
        received = linked.outputs[index]
        if received != spec.type:
            expected = spec.type if spec.type != "COMBO" else config[0] if len(config[0]) <= 20 else "COMBO"
            return _reason(
                "return_type_mismatch",
                "Return type mismatch between linked nodes",
                f"{name}, received_type({received}) mismatch input_type({expected})",
                input_name=name,
                input_config=config,
                received_type=received,
                linked_node=[source, index],
            )
        result.inputs[name] = [source, index]
        result.links[name] = (source, index)
        return None

    def _config(self, spec: InputSpec) -> list[Any]:
        """The input as ``/object_info`` shows it, always ``[TYPE, options]`` (ComfyUI's input_config)."""
        config = self._configs.get(id(spec))
        if config is None:
            config = input_config(spec, self.choices, self.limits)
            config = self._configs[id(spec)] = config if len(config) == 2 else [config[0], {}]
        return config

    def _option_set(self, spec: InputSpec) -> frozenset[str]:
        key = spec.options if isinstance(spec.options, str) else f"{spec.name}:{id(spec)}"
        found = self._option_sets.get(key)
        if found is None:
            found = self._option_sets[key] = frozenset(combo_values(spec, self.choices))
        return found

    # 5. what runs ---------------------------------------------------------------------------
    def _upstream(self, output: str) -> list[str]:
        """The output node and every node it depends on (each once, output first)."""
        seen, order, stack = {output}, [], [output]
        while stack:
            node_id = stack.pop()
            order.append(node_id)
            result = self.results.get(node_id)
            for source, _ in result.links.values() if result else ():
                if source not in seen and source in self.results:
                    seen.add(source)
                    stack.append(source)
        return order

    def _images_written(self, result: _Result) -> int:
        source, index = result.links["images"]
        shapes_ = self.results[source].shapes
        shape = shapes_[index] if index < len(shapes_) else None
        return shape.batch if shape is not None else 1

    def _validated(self, good: list[str], node_errors: dict[str, Any], image_count: int) -> ValidatedGraph:
        needed: set[str] = set()
        for output in good:
            needed.update(self._upstream(output))
        graph: dict[str, Any] = {}
        images: list[str] = []
        checkpoint: str | None = None
        largest: tuple[int, int] | None = None
        for node_id, node in self.prompt.items():  # the prompt's own order
            if node_id not in needed:
                continue
            inputs = self.results[node_id].inputs
            for shape in self.results[node_id].shapes:
                largest = _larger(largest, shape)
            graph[node_id] = {"class_type": node["class_type"], "inputs": inputs}
            if node["class_type"] in ("LoadImage", "LoadImageMask") and inputs["image"] not in images:
                images.append(inputs["image"])
            if node["class_type"] == "CheckpointLoaderSimple" and checkpoint is None:
                checkpoint = inputs["ckpt_name"]
        return ValidatedGraph(
            graph, tuple(good), node_errors, tuple(images), image_count, checkpoint, largest
        )


def _escapes(prefix: str) -> bool:
    """Whether a SaveImage prefix ("sub/dir/name" is fine) would leave the output folder."""
    parts = prefix.replace("\\", "/").split("/")
    drive = len(prefix) >= 2 and prefix[1] == ":" and prefix[0].isascii() and prefix[0].isalpha()  # C:
    return prefix.startswith(("/", "\\")) or ".." in parts or "\x00" in prefix or drive


def _larger(largest: tuple[int, int] | None, shape: shapes.Shape | None) -> tuple[int, int] | None:
    if shape is None or shape.width is None or shape.height is None:
        return largest
    if largest is None or shape.width * shape.height > largest[0] * largest[1]:
        return (shape.width, shape.height)
    return largest


def _cast(type_: str, value: Any) -> Any:
    """ComfyUI's casts (``int()``, ``float()``, ``str()``, ``bool()``), refusing what cannot be a
    number we can run: NaN and infinities (ComfyUI lets a NaN FLOAT through)."""
    if type_ == "INT":
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"cannot convert float {value} to integer")
        return int(value)
    if type_ == "FLOAT":
        number = float(value)
        if not math.isfinite(number):
            raise ValueError(f"{number} is not a finite number")
        return number
    if type_ == "STRING":
        if isinstance(value, dict | list):
            raise TypeError(f"expected a string, got {type(value).__name__}")
        return str(value)
    return bool(value)
