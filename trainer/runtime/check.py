"""What the worker finds on this machine for a config, without training: ``--check``.

    python -m trainer --check --config configs/demo_conservative.yaml [--set key=value ...]
    python -m trainer --check --fetch --config ...   # download missing `download: true` data

prints one JSON document (the orchestrator's preflight reads it; it imports no torch itself)::

    {"config": "configs/demo_conservative.yaml", "config_hash": "…", "ok": true,
     "device": {"requested": "auto", "device": "cuda", "type": "cuda",
                "name": "NVIDIA H100 80GB HBM3", "memory_bytes": 85045379072, "error": null},
     "datasets": [
        {"key": "cifar10", "name": "cifar10", "path": "./data", "status": "ok",
         "description": "data/cifar-10-batches-py (50000 train)", "message": null},
        {"key": "stl10", "name": "stl10", "path": "data/stl10_binary", "status": "missing",
         "description": null, "message": "stl10: not found at … — set download: true …"}]}

- ``device``: what ``device`` (``auto`` or explicit) resolves to (``trainer.runtime.device``).
``name``
  is the GPU's name on CUDA, the host's processor otherwise; ``memory_bytes`` the GPU's total
  memory on CUDA, else null. A device that is not available: ``device``/``type`` null and
  ``error`` the reason (the torch build). ``ranks`` (when the device resolved): what
  ``distributed`` asks for on this node — ``nproc_per_node``, ``nnodes``, ``world_size``, the
  ``devices`` the processes would use (``cuda:0`` … one per GPU), ``cuda_devices`` visible; more
  processes than GPUs is the device's ``error``.
- ``datasets``: every ``data.datasets`` entry, in order, opened as training opens it
  (``trainer.data.pipeline.describe_dataset``). ``status`` ``ok`` with a one-line ``description``;
  ``missing`` (``trainer.data.datasets.DataMissingError``): ``name`` and the expected ``path`` from
  the error, ``message`` its text, which says how to get the dataset; ``error``: any other
  exception, ``message`` as ``Type: text``. ``downloadable``: ``download: true`` on a dataset
  that can be downloaded (``trainer/data/fetch.py``); ``fetched``: this run downloaded it
  (``--check --fetch`` only; without ``--fetch`` nothing is downloaded).
- ``ok``: the device resolved and every dataset opened.

A config that does not load prints ``{"config": …, "ok": false, "error": "<file: key: why>"}``
instead (the message names the file and the key). Exit codes: 0 ok, 1 the document reports a
problem, 2 (``EXIT_USAGE``) the config does not load.
"""

from __future__ import annotations

import platform
from typing import Any

from trainer.config import Config, ConfigError


def device_facts(requested: str) -> dict[str, Any]:
    """The device ``requested`` resolves to, with its facts (see the module docstring)."""
    import torch

    from trainer.runtime.device import select_device

    facts: dict[str, Any] = {
        "requested": requested,
        "device": None,
        "type": None,
        "name": None,
        "memory_bytes": None,
        "error": None,
    }
    try:
        dev = select_device(requested)
    except ConfigError as exc:
        facts["error"] = str(exc)
        return facts
    facts.update(
        device=str(dev), type=dev.type, name=platform.processor() or platform.machine() or None
    )
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        facts.update(name=props.name, memory_bytes=int(props.total_memory))
    return facts


def dataset_facts(cfg: Config, fetch: bool = False) -> list[dict[str, Any]]:
    """Every training dataset's description, or why it cannot be opened; with ``fetch``, a
    missing ``download: true`` dataset is downloaded first (progress on stderr)."""
    from trainer.data.datasets import DataMissingError
    from trainer.data.fetch import FETCHABLE
    from trainer.data.pipeline import describe_dataset, named_datasets

    out: list[dict[str, Any]] = []
    for key, spec in named_datasets(cfg):
        row: dict[str, Any] = {
            "key": key,
            "name": spec.name,
            "path": spec.path,
            "status": "ok",
            "description": None,
            "message": None,
            "downloadable": bool(spec.download and spec.name in FETCHABLE),
            "fetched": False,
        }
        try:
            try:
                row["description"] = describe_dataset(spec, cfg, fetch_ok=False)
            except DataMissingError:
                if not (fetch and row["downloadable"]):
                    raise
                row["description"] = describe_dataset(spec, cfg, fetch_ok=True)
                row["fetched"] = True
        except DataMissingError as exc:
            row.update(status="missing", name=exc.dataset, path=exc.path, message=str(exc))
        except Exception as exc:
            row.update(status="error", message=f"{type(exc).__name__}: {exc}")
        out.append(row)
    return out


def rank_facts(cfg: Config, device: dict[str, Any]) -> dict[str, Any]:
    """The processes ``distributed`` asks for on this node and the devices they would use."""
    import torch

    cuda = torch.cuda.device_count() if device.get("type") == "cuda" else 0
    d = cfg.distributed
    nproc = d.nproc(cuda)
    if device.get("type") == "cuda":
        devices = [f"cuda:{i}" for i in range(nproc)]
    else:
        devices = [str(device.get("device"))] * nproc
    error = None
    if device.get("type") == "cuda" and nproc > cuda:
        error = (
            f"distributed.nproc_per_node {d.nproc_per_node} on this node, but only {cuda} CUDA "
            "device(s) are visible (one process per GPU)"
        )
    return {
        "nproc_per_node": nproc,
        "nnodes": d.nnodes,
        "world_size": nproc * d.nnodes,
        "devices": devices,
        "cuda_devices": cuda,
        "error": error,
    }


def check(cfg: Config, source: str, fetch: bool = False) -> dict[str, Any]:
    """The ``--check`` document for a loaded config (``source``: the config path as given);
    ``fetch`` (``--check --fetch``) downloads missing ``download: true`` datasets first."""
    device = device_facts(cfg.device)
    if device["error"] is None:
        ranks = rank_facts(cfg, device)
        device["ranks"] = ranks
        device["error"] = ranks["error"]
    datasets = dataset_facts(cfg, fetch)
    ok = device["error"] is None and all(d["status"] == "ok" for d in datasets)
    return {
        "config": source,
        "config_hash": cfg.hash(),
        "ok": ok,
        "device": device,
        "datasets": datasets,
    }


def config_failure(source: str, exc: ConfigError) -> dict[str, Any]:
    """The ``--check`` document when the config does not load."""
    return {"config": source, "ok": False, "error": str(exc)}
