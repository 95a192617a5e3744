"""``--set key.path=value`` overrides and the rules for a knob with several spellings.

    raw = apply_overrides(load_raw(path), ["training.lr=1e-4", "data.batch_size=16"])

Values are parsed as YAML scalars/lists; a string that reads as a float (YAML 1.1 leaves
``1e-4`` a string) becomes one, in overrides and in files alike (:func:`fix_floats`).
"""

from __future__ import annotations

from typing import Any

import yaml

from trainer.config.base import ConfigError


def parse_override(text: str) -> tuple[list[str], Any]:
    """'training.lr=1e-4' → (['training', 'lr'], 0.0001); values are YAML scalars/lists."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key.path=value")
    key, _, raw = text.partition("=")
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise ConfigError(f"--set {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: value is not valid YAML ({exc})") from exc
    if isinstance(value, str) and looks_like_float(value):
        value = float(value)  # YAML 1.1 reads "1e-4" as a string
    return path, value


def looks_like_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return any(c in text.lower() for c in "e.") and text.strip().lower() not in ("nan", "inf")


# One knob, several spellings (upstream's and ours). A --set of one spelling speaks for the knob:
# the file's other spellings follow it (SAME: set to the same value) or give way to it
# (REPLACED: removed), so "--set evaluation.eval_frequency=20" on a file that also says
# experiment.eval_frequency: 10, or "--set data.datasets=[...]" on a file that says
# data.dataset: imagenet100, is the change a person (or a fallback rung) meant, not a conflict.
SAME: tuple[tuple[str, ...], ...] = (
    ("evaluation.eval_frequency", "experiment.eval_frequency", "evaluation.knn.frequency"),
    ("model.use_fpn", "model.fpn.use_fpn"),
)
REPLACED: dict[str, tuple[str, ...]] = {
    "data.datasets": ("data.dataset", "data.data_path", "data.use_multi_dataset"),
    "data.dataset": ("data.datasets", "data.use_multi_dataset"),
}


def _lookup(raw: dict[str, Any], dotted: str) -> tuple[dict[str, Any] | None, str]:
    *parents, last = dotted.split(".")
    node: Any = raw
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    return (node if isinstance(node, dict) else None), last


def _follow_spellings(raw: dict[str, Any], key: str, value: Any, set_keys: set[str]) -> None:
    for group in SAME:
        if key in group:
            for other in group:
                node, last = _lookup(raw, other)
                if other not in set_keys and node is not None and last in node:
                    node[last] = value
    for other in REPLACED.get(key, ()):
        node, last = _lookup(raw, other)
        if other not in set_keys and node is not None:
            node.pop(last, None)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    set_keys = {item.partition("=")[0].strip() for item in overrides}
    for item in overrides:
        path, value = parse_override(item)
        _follow_spellings(raw, ".".join(path), value, set_keys)
        node = raw
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is not a section")
            node = child
        node[path[-1]] = value
    return raw


def fix_floats(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: fix_floats(v) for k, v in node.items()}
    if isinstance(node, list):
        return [fix_floats(v) for v in node]
    if isinstance(node, str) and looks_like_float(node):
        return float(node)
    return node
