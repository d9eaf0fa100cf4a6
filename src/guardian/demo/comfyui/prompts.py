"""The simulated ComfyUI's prompts: node classes, prompt validation and the queue model.

Validation answers what ComfyUI 0.3.64's ``validate_prompt`` answers (400 bodies with
``error.type`` and per-node ``node_errors``, captures ``invalid_prompt_responses.json``); the
queue model holds what ComfyUI's ``PromptQueue`` holds: the pending items as 5-element arrays
``[number, prompt_id, prompt, extra_data, outputs_to_execute]``, the running one, the counter
and the history.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from guardian.demo.http import BadRequest

MAX_HISTORY = 10000  # ComfyUI's MAXIMUM_HISTORY_SIZE

_HIDDEN = {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}


def _int_input(default: int, lo: int, hi: int, **extra: Any) -> list[Any]:
    return ["INT", {"default": default, "min": lo, "max": hi, **extra}]


def _node_info(
    name: str, display: str, required: dict[str, Any], output: list[str], *,
    description: str, hidden: bool, module: str = "nodes", category: str = "image",
) -> dict[str, Any]:
    inputs: dict[str, Any] = {"required": required}
    order: dict[str, list[str]] = {"required": list(required)}
    if hidden:
        inputs["hidden"] = dict(_HIDDEN)
        order["hidden"] = list(_HIDDEN)
    return {
        "input": inputs,
        "input_order": order,
        "output": output,
        "output_is_list": [False] * len(output),
        "output_name": list(output),
        "name": name,
        "display_name": display,
        "description": description,
        "python_module": module,
        "category": category,
        "output_node": not output,
    }


_SAVES = "Saves the input images to your ComfyUI output directory."
NODE_INFO: dict[str, dict[str, Any]] = {
    "EmptyImage": _node_info(
        "EmptyImage", "EmptyImage",
        {
            "width": _int_input(512, 1, 16384, step=1),
            "height": _int_input(512, 1, 16384, step=1),
            "batch_size": _int_input(1, 1, 4096),
            "color": _int_input(0, 0, 16777215, step=1, display="color"),
        },
        ["IMAGE"], description="", hidden=False,
    ),
    "PreviewImage": _node_info(
        "PreviewImage", "Preview Image", {"images": ["IMAGE"]}, [],
        description=_SAVES, hidden=True,
    ),
    "SaveImage": _node_info(
        "SaveImage", "Save Image",
        {
            "images": ["IMAGE", {"tooltip": "The images to save."}],
            "filename_prefix": ["STRING", {
                "default": "ComfyUI",
                "tooltip": "The prefix for the file to save. This may include formatting "
                "information such as %date:yyyy-MM-dd% or %Empty Latent Image.width% to "
                "include values from nodes.",
            }],
        },
        [], description=_SAVES, hidden=True,
    ),
}

# Job nodes for jobs Guardian did not submit, as a custom node pack would add them: one
# computes (burns CPU, polls the interrupt flag like ComfyUI's samplers do), one sits in a
# plain sleep (ignores /interrupt until it returns, like the capture's GuardianSleep node).
BUSY_NODE, SLEEP_NODE = "GuardianBusy", "GuardianSleep"
_SECONDS = ["FLOAT", {"default": 1.0, "min": 0.0, "max": 86400.0, "step": 0.1}]
for _name, _what in ((BUSY_NODE, "Burns CPU for `seconds`, stopping on interrupt."),
                     (SLEEP_NODE, "Sleeps for `seconds`, deaf to interrupts.")):
    NODE_INFO[_name] = _node_info(
        _name, _name, {"images": ["IMAGE"], "seconds": _SECONDS}, ["IMAGE"],
        description=_what, hidden=False, module="custom_nodes.guardian_sim",
        category="guardian",
    )
WORK_NODES = frozenset({BUSY_NODE, SLEEP_NODE})


def job_prompt(kind: str, seconds: float) -> dict[str, Any]:
    """A model-free job graph: EmptyImage -> GuardianBusy/GuardianSleep -> PreviewImage."""
    node = {"busy": BUSY_NODE, "sleep": SLEEP_NODE}[kind]
    return {
        "1": {"class_type": "EmptyImage",
              "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "3": {"class_type": node, "inputs": {"images": ["1", 0], "seconds": float(seconds)}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
    }

_VALIDATE_TRACEBACK = [
    'File "ComfyUI/execution.py", line 1010, in validate_prompt  [source line redacted]',
    'File "ComfyUI/execution.py", line 788, in validate_inputs  [source line redacted]',
]


def error_reason(kind: str, message: str, details: str = "", extra: Any = None) -> dict[str, Any]:
    return {"type": kind, "message": message, "details": details, "extra_info": extra or {}}


def is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2


# ---------------------------------------------------------------------- validation


@dataclass
class Validation:
    error: dict[str, Any] | None
    outputs: list[str]
    node_errors: dict[str, Any]


def validate_prompt(prompt: dict[str, Any]) -> Validation:
    """ComfyUI's ``validate_prompt``, reduced to the three known node classes."""
    outputs: list[str] = []
    for node_id, node in prompt.items():
        if not isinstance(node, dict):
            raise BadRequest(f"node {node_id} is not an object")  # ComfyUI raises: a 500
        if "class_type" not in node:
            msg = "Cannot execute because a node is missing the class_type property."
            return Validation(error_reason("invalid_prompt", msg, f"Node ID '#{node_id}'"), [], {})
        class_type = node["class_type"]
        if class_type not in NODE_INFO:
            msg = f"Cannot execute because node {class_type} does not exist."
            return Validation(error_reason("invalid_prompt", msg, f"Node ID '#{node_id}'"), [], {})
        if NODE_INFO[class_type]["output_node"]:
            outputs.append(node_id)
    if not outputs:
        return Validation(error_reason("prompt_no_outputs", "Prompt has no outputs"), [], {})

    validated: dict[str, tuple[bool, list[dict[str, Any]]]] = {}
    good: list[str] = []
    failed: list[dict[str, Any]] = []
    node_errors: dict[str, Any] = {}
    for out in outputs:
        try:
            valid, reasons = _validate_inputs(prompt, out, validated)
        except (KeyError, IndexError, TypeError) as exc:
            valid = False
            reasons = [error_reason(
                "exception_during_validation", "Exception when validating node", str(exc),
                {"exception_type": type(exc).__name__, "traceback": list(_VALIDATE_TRACEBACK)},
            )]
            validated[out] = (False, reasons)
        if valid:
            good.append(out)
            continue
        failed.extend(reasons)
        for node_id, (ok, node_reasons) in validated.items():
            if not ok and node_reasons:
                entry = node_errors.setdefault(node_id, {
                    "errors": node_reasons,
                    "dependent_outputs": [],
                    "class_type": prompt[node_id]["class_type"],
                })
                entry["dependent_outputs"].append(out)
    if not good:
        details = "\n".join(f"{r['message']}: {r['details']}" for r in failed)
        error = error_reason(
            "prompt_outputs_failed_validation", "Prompt outputs failed validation", details
        )
        return Validation(error, [], node_errors)
    return Validation(None, good, node_errors)


def _validate_inputs(
    prompt: dict[str, Any], node_id: str, validated: dict[str, tuple[bool, list[dict[str, Any]]]]
) -> tuple[bool, list[dict[str, Any]]]:
    if node_id in validated:
        return validated[node_id]
    validated[node_id] = (True, [])  # provisional: breaks cycles
    node = prompt[node_id]
    inputs = node.get("inputs", {})
    if not isinstance(inputs, dict):
        raise TypeError(f"inputs of node {node_id} is not an object")
    info = NODE_INFO[node["class_type"]]
    reasons: list[dict[str, Any]] = []
    valid = True
    for name, spec in info["input"]["required"].items():
        input_type = spec[0]
        config = spec[1] if len(spec) > 1 else {}
        if name not in inputs:
            reasons.append(error_reason("required_input_missing", "Required input is missing", name,
                                   {"input_name": name}))
            valid = False
            continue
        value = inputs[name]
        if is_link(value):
            source = prompt[value[0]]  # KeyError for a link to a missing node, as in ComfyUI
            received = NODE_INFO[source["class_type"]]["output"][value[1]]
            if received != input_type:
                reasons.append(error_reason(
                    "return_type_mismatch", "Return type mismatch between linked nodes",
                    f"{name}, received_type({received}) mismatch input_type({input_type})",
                    {"input_name": name, "input_config": spec, "received_type": received,
                     "linked_node": value},
                ))
                valid = False
                continue
            if not _validate_inputs(prompt, value[0], validated)[0]:
                valid = False
            continue
        if input_type in ("INT", "FLOAT"):
            convert = int if input_type == "INT" else float
            try:
                number = convert(value)
            except (TypeError, ValueError) as exc:
                reasons.append(error_reason(
                    "invalid_input_type",
                    f"Failed to convert an input value to a {input_type} value",
                    f"{name}, {value}, {exc}",
                    {"input_name": name, "input_config": spec, "received_value": value},
                ))
                valid = False
                continue
            extra = {"input_name": name, "input_config": spec, "received_value": number}
            if "min" in config and number < config["min"]:
                reasons.append(error_reason("value_smaller_than_min",
                                       f"Value {number} smaller than min of {config['min']}",
                                       name, extra))
                valid = False
            elif "max" in config and number > config["max"]:
                reasons.append(error_reason("value_bigger_than_max",
                                       f"Value {number} bigger than max of {config['max']}",
                                       name, extra))
                valid = False
    validated[node_id] = (valid, reasons)
    return valid, reasons


# ---------------------------------------------------------------------- the simulator


class PromptQueue:
    """ComfyUI's queue, running item and history. Not locked itself: every caller holds the
    simulator's ``cond``."""

    def __init__(self) -> None:
        self.number = 0  # the server's counter: restarts at 0 with the process
        self.pending: list[list[Any]] = []
        self.running: list[Any] | None = None
        self.history: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def put(self, item: list[Any]) -> None:
        self.pending.append(item)

    def next_number(self, front: bool = False) -> int:
        """The counter's next value (negated for ``front``), advancing it."""
        number = -self.number if front else self.number
        self.number += 1
        return number

    def view(self) -> dict[str, Any]:
        """``GET /queue``'s body, a deep copy."""
        return copy.deepcopy({
            "queue_running": [self.running] if self.running is not None else [],
            "queue_pending": sorted(self.pending, key=lambda item: item[0]),
        })

    def remaining(self) -> int:
        return len(self.pending) + (self.running is not None)

    def take(self) -> list[Any]:
        """The pending item with the lowest number, now running."""
        item = min(self.pending, key=lambda i: i[0])
        self.pending.remove(item)
        self.running = item
        return item

    def finish(self, item: list[Any], entry: dict[str, Any] | None) -> None:
        """The running item is done; its history entry (None: none, the server stopping)."""
        self.running = None
        if entry is not None:
            self.history[item[1]] = entry
            while len(self.history) > MAX_HISTORY:
                self.history.popitem(last=False)

