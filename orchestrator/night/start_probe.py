"""The feature probe at a night's start, for a night that preflight never measured.

    row = probe_at_start(runner)        # before the first attempt; None when skipped

A night whose config has no record in ``STATE_DIR/preflight.jsonl`` (the demo plan runs without
preflight) would have no evidence for ``speedup_vs_no_flash`` nor for the report's feature
table. Before its first attempt it runs a short version of preflight's feature probe
(``orchestrator/preflight/features.py``): one worker process (``--probe 2 --probe-warmup 1``,
one process even where the night runs several) times the night's config and, one at a time,
each optional feature it turns on switched off, at the night's own micro-batch. The
``faults.*`` keys are left out (they test the fallbacks; they are not the machine). The row is
appended to ``preflight.jsonl`` with ``"source": "night start"``, whatever came of it, so a
resumed or restarted night finds it and does not probe again.

Bounded: the probe gets ``bound_s(window)`` (5% of the window, between 45 s and 3 min: a few
seconds on a quiet machine for the demo recipes, but a loaded one needs its torch start-up too)
and a stop request; past either it is stopped (its process group), and the configurations measured
by then are kept (the worker prints each as soon as it is measured). Skipped: for a config
that turns no optional feature on, when a record for the config exists, and when
``HJEPA_FEATURE_PROBE=0`` (a machine whose costs are known, and the test suite, which would
pay it on every night).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from orchestrator.core.state import now_iso, parse_iso
from orchestrator.night.attempts import NightBase, worker_env
from orchestrator.night.history import override_args
from orchestrator.policy.recovery import probe_escalation
from orchestrator.preflight.features import (
    costs_from_probe,
    feature_toggles,
    probe_doc,
    record_fields,
    variant_item,
)
from orchestrator.preflight.fit import append_record, read_fits

STEPS, WARMUP = 2, 1
PROBE_DIR = "feature-probe"  # STATE_DIR/runs/<night>/feature-probe: events, resolved config, log
ENV_SWITCH = "HJEPA_FEATURE_PROBE"


def bound_s(window_s: float) -> float:
    """The most the probe may take: 5% of the window, at least 45 s, at most 3 minutes."""
    return max(45.0, min(180.0, 0.05 * window_s))


def has_record(state_dir: Path, config: str) -> bool:
    """Whether ``preflight.jsonl`` holds a feature probe of ``config`` (by file name, as the
    night's ending and the report match it)."""
    name = Path(config).name
    return any(
        Path(str(r.get("config"))).name == name and "features" in r for r in read_fits(state_dir)
    )


def skip_reason(runner: NightBase) -> str | None:
    """Why the night starts without probing (None: it probes)."""
    if os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "off", "false", "no"):
        return f"{ENV_SWITCH} is off"
    if runner.night.attempts:
        return "the night has started already"
    if not feature_toggles(runner.base_cfg, runner.base_cfg):
        return "no optional feature is on"
    if has_record(runner.store.dir, runner.night.config):
        return "measured already"
    return None


def probe_at_start(runner: NightBase) -> dict[str, Any] | None:
    """Run the probe for ``runner``'s night unless :func:`skip_reason`; append and return the
    row (None when skipped or stopped on request before it ended). Never raises: the night
    goes on without the evidence (the row says why where it can be written)."""
    if skip_reason(runner) is not None:
        return None
    try:
        return _probe(runner)
    except Exception as exc:
        row = {"config": runner.night.config, "source": "night start", "night": runner.night.name,
               "features": [], "error": f"{type(exc).__name__}: {exc}"}  # fmt: skip
        with contextlib.suppress(OSError):
            append_record(runner.store.dir, row)
        return row


def _probe(runner: NightBase) -> dict[str, Any] | None:
    n, sys_ = runner.night, runner.sys
    toggles = feature_toggles(runner.base_cfg, runner.base_cfg)
    sets = {k: v for k, v in n.overrides.items() if not k.startswith("faults.")}
    run_dir = runner.runs / PROBE_DIR
    run_dir.mkdir(parents=True, exist_ok=True)
    log = run_dir / "probe.log"
    log.write_bytes(b"")
    argv = [*runner.worker_command(alone=True), "--config", str(Path(n.config).resolve())]
    argv += ["--run-dir", str(run_dir), "--probe", str(STEPS), "--probe-warmup", str(WARMUP)]
    for _, key, on in toggles:
        argv += ["--probe-variant", variant_item(key, on)]
    for item in override_args(sets):
        argv += ["--set", item]
    limit = bound_s(_window_s(runner))
    t0 = sys_.monotonic()
    pid = sys_.spawn(argv, Path.cwd(), log, worker_env())
    created = sys_.create_time(pid)
    cut = ""
    while True:
        exited, code = sys_.poll(pid)
        if exited:
            break
        if runner.stop.is_set() or sys_.monotonic() - t0 > limit:
            cut = "stop requested" if runner.stop.is_set() else f"cut at its {limit:.0f} s bound"
            sys_.stop_group(pid, created, probe_escalation().waits)
            code = None
            break
        sys_.sleep(0.2)
    if cut == "stop requested":
        return None
    text = log.read_text(encoding="utf-8", errors="replace")
    doc = probe_doc(text)
    row: dict[str, Any] = {
        "config": n.config,
        "source": "night start",
        "night": n.name,
        "at": now_iso(),
        "micro": runner.base_cfg.data.batch_size,
        "accum": runner.base_cfg.training.accumulation_steps,
        "steps": STEPS,
        "seconds": round(sys_.monotonic() - t0, 1),
    }
    if doc is None:
        tail = " | ".join(text.strip().splitlines()[-2:])
        row["features"] = []
        row["error"] = cut or f"the probe exited {code}: {tail or 'no output'}"
    else:
        row["device"] = doc.get("device")
        costs = costs_from_probe(doc, toggles)
        row.update(record_fields(costs))
        if cut and any(c.on.error or c.off.error for c in costs):  # not just its exit cut
            row["error"] = cut
    append_record(runner.store.dir, row)
    return row


def _window_s(runner: NightBase) -> float:
    """The night's window: its deadline less its start (the runbook's when unknown)."""
    n = runner.night
    if n.window_start and n.deadline:
        return max(0.0, parse_iso(n.deadline).timestamp() - parse_iso(n.window_start).timestamp())
    return runner.rb.window_hours * 3600
