"""The Markdown sections of one night in the morning report, and the two nights side by side.

    lines = what_ran(facts) + timeline(facts) + ...   # each a list of lines, a blank one last

What ran (config, device, attempts), the timeline with every fallback (trigger, evidence,
effect), time against the window and the forecast error, throughput and peak memory,
preflight's plan against what was measured, final metrics with the gain over the
random-initialised encoder, the best checkpoint with the commands to resume or evaluate it, the
plots (written beside the report by :mod:`orchestrator.views.plots`), and conservative against
aggressive when two nights ran.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from orchestrator.preflight.fit import read_fits
from orchestrator.views import plots
from orchestrator.views.fmt import (
    NA,
    batch_text,
    fmt_clock,
    fmt_dur,
    fmt_gb,
    fmt_num,
    fmt_pct,
    sleep_lines,
)
from orchestrator.views.report.facts import NightFacts
from orchestrator.views.report.markdown import fmt_set, md_table, set_args
from orchestrator.views.snapshot import device_total, iso_ts, whole_card


def what_ran(f: NightFacts) -> list[str]:
    n, s = f.night, f.run.started or {}
    out = [
        f"- config `{n.config}`, runbook `{n.runbook}`, "
        f"device **{n.device or s.get('device', NA)}**"
        f" ({s.get('precision', NA)}), {s.get('params_total', NA)} parameters",
        f"- epochs done {n.epochs_done if n.epochs_done is not None else NA} of "
        f"{n.epochs_planned or f.run.total_epochs or NA} planned; {len(n.attempts)} attempt(s); "
        f"micro-batch {s.get('micro_batch', NA)} × accumulation {s.get('accum_steps', NA)}"
        + (
            f" × {s['world_size']} ranks (global batch {s.get('global_batch', NA)})"
            if int(s.get("world_size") or 1) > 1
            else ""
        )
        + " at the end",
        "- overrides in force at the end: "
        + (", ".join(f"`{k}={fmt_set(v)}`" for k, v in n.overrides.items()) or "none"),
    ]
    overflow = f.overflow_steps()
    if overflow:
        out.append(
            f"- gradient-overflow steps skipped (fp16 loss scaling backs off; routine, not a "
            f"failure): {sum(overflow.values())} ("
            + ", ".join(f"attempt {i}: {k}" for i, k in sorted(overflow.items()))
            + ")"
        )
    out.append("")
    rows = []
    batches = {i: batch_text(ev) for i, ev in f.attempt_events("started")}
    for a in n.attempts:
        rows.append(
            [
                a.index,
                fmt_clock(iso_ts(a.started_at)),
                Path(a.resume_from).name if a.resume_from else "start",
                batches.get(a.index, NA),
                a.exit_kind or "running",
                a.exit_code if a.exit_code is not None else "",
                f"{a.last_epoch if a.last_epoch is not None else NA} / "
                f"{a.last_step if a.last_step is not None else NA}",
                fmt_num(f.median_img_s(a.index), ".1f"),
                (a.message or "")[:90],
            ]
        )
    if rows:
        out += md_table(
            [
                "attempt",
                "started",
                "resumed from",
                "batch",
                "ended",
                "exit",
                "epoch / step",
                "img/s",
                "message",
            ],
            rows,
        )
    return out


def timeline(f: NightFacts) -> list[str]:
    n = f.night
    items: list[tuple[float, str]] = []
    if f.start:
        items.append(
            (f.start, f"night started (window {fmt_clock(f.window_start)}–{fmt_clock(f.deadline)})")
        )
    for a in n.attempts:
        if (t := iso_ts(a.started_at)) is not None:
            resume = f", resumed from `{Path(a.resume_from).name}`" if a.resume_from else ""
            items.append((t, f"attempt {a.index} started{resume}"))
        if (t := iso_ts(a.ended_at)) is not None:
            items.append(
                (
                    t,
                    f"attempt {a.index} ended: {a.exit_kind} (exit {a.exit_code})"
                    + (f" — {a.message}" if a.message else ""),
                )
            )
    for ev in f.run.evals:
        items.append(
            (
                ev["ts"],
                f"eval epoch {ev.get('epoch')}: kNN k=20 "
                f"{fmt_pct((ev.get('knn') or {}).get('20'))}, linear probe "
                f"{fmt_pct(ev.get('linear_probe'))}",
            )
        )
    for fb in n.fallbacks:
        if (t := iso_ts(fb.at)) is not None:
            items.append((t, f"**fallback {fb.trigger}** → {fb.action}"))
    for ev in f.run.epochs:
        if ev.get("total_epochs") and ev is f.run.epochs[-1]:
            items.append((ev["ts"], f"last epoch end: {ev.get('epoch')}/{ev['total_epochs']}"))
    for d in n.decisions:
        if d.kind in ("rung_skipped", "runner_error") and (t := iso_ts(d.at)) is not None:
            label = "rung skipped" if d.kind == "rung_skipped" else "**runner error**"
            items.append((t, f"{label}: {d.action}"))
    for index, ev in f.attempt_events("resume_partial"):
        dropped, missing = ev.get("dropped") or [], ev.get("missing") or []
        items.append(
            (
                float(ev["ts"]),
                f"attempt {index} resumed `{Path(str(ev['path'])).name}` "
                f"partially: dropped {len(dropped)} tensors ({_prefixes(dropped) or '-'}), "
                f"{len(missing)} new ({_prefixes(missing) or '-'}); optimizer state "
                f"{ev.get('optimizer', NA)}",
            )
        )
    for ft in f.run.fatals:
        feature = f" (feature {ft['feature']})" if ft.get("feature") else ""
        items.append((ft["ts"], f"worker fatal **{ft.get('kind')}**{feature}: {ft.get('message')}"))
    if f.end:
        items.append((f.end, f"night ended: {n.status}" + (f" — {n.reason}" if n.reason else "")))
    items.sort(key=lambda x: (x[0], "ended" in x[1]))
    out = [f"- {fmt_clock(t)} {text}" for t, text in items]
    if n.fallbacks:
        out += ["", "Fallbacks applied:", ""]
        out += md_table(
            ["at", "trigger", "action", "evidence", "effect"],
            [
                [
                    fmt_clock(iso_ts(fb.at)),
                    fb.trigger,
                    fb.action,
                    ", ".join(f"{k}={v}" for k, v in fb.evidence.items()),
                    fb.effect or "",
                ]
                for fb in n.fallbacks
            ],
        )
    else:
        out += ["", "No fallbacks were needed.", ""]
    return out


def _prefixes(keys: list[str], depth: int = 2) -> str:
    """``['fpn.lateral.0.weight', 'fpn.lateral.0.bias', ...]`` → ``fpn.lateral.*``."""
    seen: dict[str, None] = {}
    for key in keys:
        parts = str(key).split(".")
        seen[".".join(parts[:depth]) + (".*" if len(parts) > depth else "")] = None
    shown = list(seen)
    return ", ".join(shown[:4]) + (f" and {len(shown) - 4} more" if len(shown) > 4 else "")


def time_and_resources(f: NightFacts) -> list[str]:
    n, run, th = f.night, f.run, f.th
    used, window = f.used_s, f.window_s
    share = f" ({100 * used / window:.0f}% of the window)" if used and window else ""
    errors = ", ".join(fmt_dur(e) for e in n.forecast_errors_s) or NA
    evals_s = sum(e.get("seconds") or 0 for e in run.evals)
    peaks = run.sample_peaks
    swap_growth = (
        peaks["swap_used"] - run.swap_first
        if "swap_used" in peaks and run.swap_first is not None
        else None
    )
    tree_measure = next(
        (str(x["tree_measure"]) for x in reversed(run.samples) if x.get("tree_measure")), "rss"
    )  # what the memory ceiling checked
    card = whole_card(run)
    return [
        f"- time used **{fmt_dur(used)}** of a {fmt_dur(window)} window{share}; "
        f"{fmt_dur(evals_s)} of it in evaluation; final eval reserve "
        f"{fmt_num(th.final_eval_minutes, 'g')} min",
        f"- forecast error (first forecast − actual end): **{fmt_dur(n.forecast_error_s)}** "
        f"(each forecast: {errors}; positive = finished earlier than forecast)",
        f"- epoch training time (mean of the last 3 epochs, evaluation and checkpoints not "
        f"included): {fmt_dur(run.recent_epoch_seconds())}; pace needed from the window's "
        f"start (all included): {fmt_dur(f.pace_s)}",
        f"- throughput: median {fmt_num(f.median_img_s(), '.1f')} img/s (last attempt "
        f"{fmt_num(f.median_img_s(n.attempts[-1].index) if n.attempts else None, '.1f')})",
        f"- peak memory: worker tree {fmt_gb(peaks.get('tree_mem', peaks.get('tree_rss')))} "
        f"({tree_measure}), device "
        f"{fmt_gb(run.device_mem_peak)}, GPU {fmt_gb(peaks.get('gpu_used'))}"
        f"{' (whole-card usage: NVML matched none of the worker processes)' if card else ''}"
        f"; lowest system available {fmt_gb(peaks.get('sys_available_min'))}; swap growth "
        f"{fmt_gb(swap_growth)}; ceilings: {th.ceilings_text(device_total(run))}",
        *sleep_lines(n),
        "",
    ]


def fitted(f: NightFacts) -> list[str]:
    """Preflight's plan (``STATE_DIR/preflight.jsonl``) next to what the night measured."""
    n = f.night
    rows = [r for r in read_fits(f.state_dir) if Path(str(r.get("config"))).name
            == Path(n.config).name and r.get("applied_to") and "epochs" in r]  # fmt: skip
    if not rows:
        return []
    r = rows[-1]
    micro = n.overrides.get("data.batch_size", r.get("micro"))
    accum = n.overrides.get("training.accumulation_steps", r.get("accum"))
    used = f.used_s
    table = md_table(["", "planned (preflight)", "measured"], [
        ["epochs", f"{r.get('epochs')} (recipe {r.get('recipe_epochs')})",
         f"{n.epochs_done if n.epochs_done is not None else NA} done"],
        ["micro-batch x accum.", f"{r.get('micro')} x {r.get('accum')}", f"{micro} x {accum}"],
        ["night length", f"{float(r.get('night_s', 0)) / 60:.1f} min of "
         f"{float(r.get('window_s', 0)) / 60:.1f}", NA if used is None else f"{used / 60:.1f} min"],
    ])  # fmt: skip
    return ["### Planned by preflight vs measured", "", *table]


def metrics_table(f: NightFacts) -> list[str]:
    fin, base = f.final, f.base
    if fin is None and base is None:
        return ["No evaluation was recorded.", ""]

    def row(label: str, a: float | None, b: float | None, frac: bool) -> list[str]:
        fmt = fmt_pct if frac else (lambda v: fmt_num(v, ".3g"))
        gain = (
            NA
            if a is None or b is None
            else (f"{100 * (b - a):+.1f} pts" if frac else f"{b - a:+.3g}")
        )
        return [label, fmt(a), fmt(b), gain]

    rows = [
        row(f"kNN k={k}", base.knn.get(k) if base else None, fin.knn.get(k) if fin else None, True)
        for k in ("1", "5", "20")
    ]
    rows.append(
        row(
            "linear probe",
            base.linear_probe if base else None,
            fin.linear_probe if fin else None,
            True,
        )
    )
    rows.append(
        row(
            "feature std",
            base.feature_std if base else None,
            fin.feature_std if fin else None,
            False,
        )
    )
    rows.append(
        row(
            "feature variance",
            base.feature_variance if base else None,
            fin.feature_variance if fin else None,
            False,
        )
    )
    rows.append(
        row(
            "effective rank",
            base.effective_rank if base else None,
            fin.effective_rank if fin else None,
            False,
        )
    )
    epoch = fin.epoch if fin and fin.epoch is not None else NA
    return md_table(["metric", "random init (epoch 0)", f"final (epoch {epoch})", "gain"], rows)


def commands(f: NightFacts, stamp: str) -> list[str]:
    n, ckpt, which = f.night, f.best_checkpoint, "best"
    if ckpt is None and f.newest_checkpoint is not None:
        ckpt, which = f.newest_checkpoint, "newest"
    base_dir = Path(f.state_dir) / "runs" / n.name
    cfg = shlex.quote(f.resolved_config)
    said = "best checkpoint" if which == "best" else "newest checkpoint (no best recorded yet)"
    out = [f"- {said}: `{ckpt}`" if ckpt else "- no checkpoint was written", ""]
    out += [
        "```sh",
        "# rerun the night with what it learned (overrides in force at the end)",
        f"hjepa-night run --config {shlex.quote(n.config)} {set_args(n.overrides)}".rstrip(),
    ]
    if ckpt:
        q = shlex.quote(ckpt)
        out += [
            f"# resume training from the {which} checkpoint (add --set training.epochs=N for more)",
            f"python -m trainer --config {cfg} --run-dir {base_dir}/resume-{stamp} --resume {q}",
            f"# evaluate the {which} checkpoint",
            f"python -m trainer --config {cfg} --run-dir {base_dir}/eval-{stamp} --resume {q} "
            "--eval-only",
        ]
    if (base_dir / "tensorboard").is_dir():  # logging.use_tensorboard: every attempt's curves
        out += ["# the night's TensorBoard curves", f"tensorboard --logdir {base_dir}/tensorboard"]
    return [*out, "```", ""]


def plot_links(f: NightFacts, out: Path) -> list[str]:
    n, run, th = f.night, f.run, f.th
    stem = f"{out.stem}-n{n.index + 1}"
    markers = [
        (t, f"{fb.trigger}: {fb.action[:40]}")
        for fb in n.fallbacks
        if (t := iso_ts(fb.at)) is not None
    ]
    made = [
        ("Loss per level", plots.plot_loss(out.parent / f"{stem}-loss.png", run, markers)),
        (
            "kNN over epochs",
            plots.plot_knn(
                out.parent / f"{stem}-knn.png",
                run,
                f.base.knn.get("20") if f.base else None,
                f.base.linear_probe if f.base else None,
            ),
        ),
        (
            "Memory over time",
            plots.plot_memory(
                out.parent / f"{stem}-memory.png",
                run,
                f.start,
                th.memory_ceiling_gb,
                th.memory_warning_gb,
                th.device_ceiling_gb(device_total(run)),
            ),
        ),
        (
            "Epoch times",
            plots.plot_epoch_times(
                out.parent / f"{stem}-epochs.png", run, f.pace_s, th.epoch_minutes_warning
            ),
        ),
    ]
    lines = []
    for title, path in made:
        lines.append(f"![{title}]({path.name})" if path else f"_{title}: no data recorded._")
        lines.append("")
    return lines
