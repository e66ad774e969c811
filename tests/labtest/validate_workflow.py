"""Checks a UI workflow (the JSON users open) against a live ComfyUI's /object_info, reading it
the way the frontend (1.2x) does: widget values in each definition's input order, one widget per
widget input except forceInput ones (sockets), plus an upload button after image_upload combos
and a control widget after seeds; links by slot into each node's socket list."""

from __future__ import annotations

FRONTEND_ONLY = {"Note", "MarkdownNote"}  # no Python class: never in /object_info
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
CONTROL_VALUES = ("fixed", "increment", "decrement", "randomize")


def _options(spec) -> dict:
    return spec[1] if len(spec) > 1 else {}


def _is_widget(spec) -> bool:
    return (isinstance(spec[0], list) or spec[0] in WIDGET_TYPES) and not _options(spec).get("forceInput")


def _specs(info: dict) -> dict:
    return {**info["input"].get("required", {}), **info["input"].get("optional", {})}


def widget_slots(info: dict) -> list[tuple[str, object]]:
    """(input name, spec) per widget the frontend creates, in order; the extra widgets get the
    pseudo-specs "upload" and "control"."""
    specs, order = _specs(info), info.get("input_order", {})
    slots = []
    for name in order.get("required", []) + order.get("optional", []):
        spec = specs[name]
        if not _is_widget(spec):
            continue
        slots.append((name, spec))
        if _options(spec).get("image_upload"):
            slots.append((name, "upload"))
        if _options(spec).get("control_after_generate", spec[0] == "INT" and name in ("seed", "noise_seed")):
            slots.append((name, "control"))
    return slots


def value_problem(spec, value) -> str | None:
    """Why the widget would not accept the value, or None."""
    if spec == "upload":
        return None if value == "image" else f"upload widget value {value!r}"
    if spec == "control":
        return None if value in CONTROL_VALUES else f"{value!r} is not one of {CONTROL_VALUES}"
    kind, options = spec[0], _options(spec)
    if isinstance(kind, list) or kind == "COMBO":
        choices = kind if isinstance(kind, list) else options.get("options", [])
        return None if value in choices else f"{value!r} is not among the options {choices[:12]}"
    if kind in ("INT", "FLOAT"):
        number = (int,) if kind == "INT" else (int, float)
        if not isinstance(value, number) or isinstance(value, bool):
            return f"{value!r} is not {kind}"
        if not options.get("min", value) <= value <= options.get("max", value):
            return f"{value!r} outside [{options.get('min')}, {options.get('max')}]"
        return None
    expected = {"BOOLEAN": bool, "STRING": str}[kind]
    return None if isinstance(value, expected) else f"{value!r} is not {kind}"


def validate_workflow(workflow: dict, object_info: dict) -> list[str]:
    """Every problem found, as readable lines (empty: the workflow loads and queues as written)."""
    errors = []
    nodes = {node["id"]: node for node in workflow["nodes"]}
    for node in workflow["nodes"]:
        where = f"node {node['id']} ({node['type']})"
        if node["type"] in FRONTEND_ONLY:
            continue
        info = object_info.get(node["type"])
        if info is None:
            errors.append(f"{where}: no such node type")
            continue
        slots, values = widget_slots(info), node.get("widgets_values", [])
        if len(values) != len(slots):
            errors.append(f"{where}: {len(values)} widget values for {len(slots)} widgets "
                          f"({', '.join(name for name, _ in slots)})")
        for (name, spec), value in zip(slots, values):
            if problem := value_problem(spec, value):
                errors.append(f"{where}: {name}: {problem}")
        specs = _specs(info)
        linked = {socket["name"] for socket in node["inputs"] if socket.get("link") is not None}
        for socket in node["inputs"]:
            if socket["name"] not in specs or _is_widget(specs[socket["name"]]):
                errors.append(f"{where}: input {socket['name']!r} is not a socket of this node")
        for name, spec in info["input"].get("required", {}).items():
            if not _is_widget(spec) and name not in linked:
                errors.append(f"{where}: required input {name!r} is not connected")
    for link_id, source_id, source_slot, target_id, target_slot, kind in workflow["links"]:
        source, target = nodes.get(source_id), nodes.get(target_id)
        if source is None or target is None or source["type"] not in object_info \
                or target["type"] not in object_info or source_slot >= len(source["outputs"]) \
                or target_slot >= len(target["inputs"]):
            errors.append(f"link {link_id}: its source or target node or slot does not exist")
            continue
        socket = target["inputs"][target_slot]
        produced = object_info[source["type"]]["output"][source_slot]
        spec = _specs(object_info[target["type"]]).get(socket["name"])
        if spec is None or not produced == spec[0] == kind == socket["type"]:
            errors.append(f"link {link_id}: {source['type']} output {source_slot} ({produced}) -> {target['type']}."
                          f"{socket['name']} ({spec and spec[0]}), link type {kind}, socket type {socket['type']}")
        if socket.get("link") != link_id or link_id not in source["outputs"][source_slot]["links"]:
            errors.append(f"link {link_id}: not recorded on both of its nodes")
    return errors


def comparable(workflow: dict) -> dict:
    """The workflow less the output slots no link uses: the frontend lists a node's outputs from
    the live node definition, and ComfyUI versions differ there (0.33's SaveImage and PreviewImage
    gained an IMAGE output), so a workflow saved on one version opens the same on the other."""
    import copy

    workflow = copy.deepcopy(workflow)
    for node in workflow["nodes"]:
        node["outputs"] = [slot for slot in node.get("outputs", []) if slot.get("links")]
    return workflow
