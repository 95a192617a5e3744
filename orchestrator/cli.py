"""``hjepa-night`` command line.

    hjepa-night start --plan sequential [--state-dir var] [--now] [--foreground] [--no-tui] [--fit]
    hjepa-night stop [--state-dir var]
    hjepa-night status [--state-dir var] [--once] [--json] [--width N]
    hjepa-night report [--state-dir var] [--night N] [--out FILE]
    hjepa-night run --config FILE [--window 8h] [--state-dir var] [--set key=value ...]
    hjepa-night join --config FILE --node-rank R [--set key=value ...]   (nodes 1.. of a night)
    hjepa-night preflight --config FILE [--window 8h] [--apply [PLAN_OR_STATE]] [--probe-steps N]
    hjepa-night init [DIR] [--force]
    hjepa-night data imagenet100 --from DIR [--to ./data/imagenet]
    hjepa-night service install --plan NAME [--state-dir var] | service uninstall [--state-dir var]

Each verb lives in its own module (``cmd_<verb>(args) -> int``); this file only parses.
"""

from __future__ import annotations

import argparse
import importlib
import sys

VERBS = {
    "start": "orchestrator.schedule.commands",
    "stop": "orchestrator.schedule.commands",
    "status": "orchestrator.views.status",
    "report": "orchestrator.views.report.write",
    "run": "orchestrator.night.run_cmd",
    "join": "orchestrator.night.join",
    "preflight": "orchestrator.preflight.command",
    "init": "orchestrator.core.datafiles",
    "data": "orchestrator.preflight.imagenet100",
    "service": "orchestrator.schedule.service",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hjepa-night", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="verb", required=True)

    def state_dir(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--state-dir", default="var", help="state, runs and reports (var)")

    sp = sub.add_parser("start", help="start the daemon for a plan")
    sp.add_argument("--plan", required=True, help="plan name or file")
    state_dir(sp)
    sp.add_argument("--now", action="store_true", help="start night 1 now, not at its time")
    sp.add_argument("--foreground", action="store_true", help="stay attached")
    sp.add_argument("--no-tui", action="store_true", help="with --foreground: log lines only")
    sp.add_argument("--fit", action="store_true",
                    help="run preflight first and plan each night's batch and epochs")  # fmt: skip
    sp.add_argument("--probe-steps", type=int, default=5, help="with --fit: timed steps (5)")
    sp.add_argument("--margin", type=float, default=0.1, help="with --fit: margin (0.1)")

    sp = sub.add_parser("stop", help="graceful stop: checkpoint, save state, exit")
    state_dir(sp)
    sp.add_argument("--timeout", type=float, default=120.0, help="seconds to wait (120)")

    sp = sub.add_parser("status", help="live status screen (or --once / --json)")
    state_dir(sp)
    sp.add_argument("--once", action="store_true", help="print one frame and exit")
    sp.add_argument("--json", action="store_true", help="print the state snapshot as JSON")
    sp.add_argument("--width", type=int, default=None, help="force the screen width (columns)")

    sp = sub.add_parser("report", help="(re)write the morning report")
    state_dir(sp)
    sp.add_argument("--night", type=int, default=None, help="only night N (1-based)")
    sp.add_argument("--out", default=None, help="report file (default var/reports/...)")

    sp = sub.add_parser("run", help="run one night in the foreground, with fallbacks")
    sp.add_argument("--config", required=True)
    sp.add_argument("--runbook", default=None, help="runbook file (default: from the config)")
    sp.add_argument("--window", default="8h", help="time window, e.g. 8h, 90m, 300s")
    state_dir(sp)
    sp.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    sp.add_argument("--no-tui", action="store_true", help="log lines instead of the live display")
    sp.add_argument(
        "--notify",
        default=None,
        metavar="CMD",
        help="run CMD (message appended) when the night ends, fails or falls back",
    )

    sp = sub.add_parser("join", help="this machine's ranks in a night across nodes")
    sp.add_argument("--config", required=True)
    sp.add_argument("--node-rank", type=int, required=True, help="this node's index (1..)")
    sp.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    sp.add_argument("--retry-s", type=float, default=5.0, help="pause before rejoining (5)")
    sp.add_argument("--once", action="store_true", help="one attempt only")
    state_dir(sp)

    sp = sub.add_parser("preflight", help="pre-flight checklist for a config")
    sp.add_argument("--config", required=True)
    sp.add_argument("--runbook", default=None)
    sp.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    sp.add_argument("--probe-steps", type=int, default=5, help="timed steps after warm-up (5)")
    sp.add_argument("--window", default="8h")
    sp.add_argument("--margin", type=float, default=0.1,
                    help="memory and window margin, a fraction (0.1)")  # fmt: skip
    sp.add_argument("--apply", nargs="?", const="", default=None, metavar="PLAN_OR_STATE",
                    help="write the planned epochs/batch as base overrides into a plan file or "
                    "state.json (bare: STATE_DIR/state.json)")  # fmt: skip
    state_dir(sp)
    sp = sub.add_parser("init", help="write editable copies of the configs, plans and runbooks")
    sp.add_argument("dir", nargs="?", default=".", help="target directory (.)")
    sp.add_argument("--force", action="store_true", help="overwrite existing files")
    for module in ("orchestrator.preflight.imagenet100", "orchestrator.schedule.service"):
        importlib.import_module(module).add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    from orchestrator.core.guard import degrade_output, state_dir_problem

    degrade_output()
    args = build_parser().parse_args(argv)
    problem = state_dir_problem(args)
    if problem:
        print(f"hjepa-night {args.verb}: {problem}", file=sys.stderr)
        return 2
    if args.verb == "start" and args.fit:
        from orchestrator.preflight.command import fit_plan
        from orchestrator.preflight.fit import ApplyError

        try:
            args.plan = fit_plan(args)
        except (ApplyError, RuntimeError, ValueError) as exc:
            print(f"hjepa-night: {exc}", file=sys.stderr)
            return 2
    module = importlib.import_module(VERBS[args.verb])
    handler = getattr(module, f"cmd_{args.verb}")
    return int(handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
