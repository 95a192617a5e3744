"""The training worker.

    python -m trainer --config configs/demo_conservative.yaml --run-dir var/runs/x
        [--resume auto|PATH] [--set key.path=value ...] [--eval-only] [--pictures]
        [--probe N [--probe-warmup W] [--probe-variant key.path=value ...]]
    python -m trainer --check --config configs/demo_conservative.yaml [--set key.path=value ...]

Writes events to ``RUN_DIR/events.jsonl`` and the resolved config to
``RUN_DIR/config.resolved.yaml``; exits with a code per outcome (``trainer/events.py``):
0 completed, 2 config/usage error, 3 stopped on request (checkpoint written), 10 oom,
11 non-finite loss (or too many gradient overflows in a row), 12 feature failure, 13 dataset
missing, 14 crash, 15 no usable checkpoint (or one lacking weights of a module still on).

``--eval-only`` evaluates the ``--resume`` checkpoint (an ``eval`` event) and exits.
``--pictures`` pictures the ``--resume`` checkpoint (a ``pictures`` event,
``trainer/eval/pictures.py``) and exits; with ``--eval-only``, after the evaluation.
``--probe N`` times N optimizer steps after warm-up and prints one JSON line
({ms_per_step, steps_per_epoch, epoch_seconds, img_per_s, linear_probe_bound_s, ...});
nothing is saved. Each ``--probe-variant`` adds one more probe of the config with that one key
changed, in the same process (``trainer/train/modes.py``): a line ``{"variant": ..., ...}`` is
printed as each is measured, and the last line carries them all under ``"variants"``.
Under the launcher (``python -m trainer.launch``, or torchrun: ``RANK``/``WORLD_SIZE`` in the
environment) every rank runs this same command; the writer (rank 0 on one node) writes the
events, the resolved config and the probe's JSON, other ranks write only a ``fatal`` event if
they fail (``trainer/runtime/dist.py``).

``--check`` (no ``--run-dir``, nothing written) prints one JSON document: the device the config
resolves to and every training dataset's description or why it is missing; exit 0 when all is
usable, 1 when not, 2 when the config does not load (``trainer/runtime/check.py`` has the shape).
``--check --fetch`` first downloads the missing ``download: true`` datasets (progress on stderr).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import traceback
from pathlib import Path

from trainer.config import ConfigError, load_config, write_resolved
from trainer.events import (
    EVENTS_FILE,
    EXIT_CODE_OF_KIND,
    EXIT_USAGE,
    RESOLVED_CONFIG_FILE,
    Fatal,
)
from trainer.runtime.emitter import Emitter


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m trainer", description="H-JEPA training worker")
    p.add_argument("--config", required=True, help="YAML config file")
    p.add_argument("--run-dir", help="where events, checkpoints and logs go (not with --check)")
    p.add_argument("--resume", default=None, help="auto (newest good checkpoint) or a path")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (YAML value), e.g. training.lr=1e-4",
    )
    p.add_argument("--eval-only", action="store_true", help="evaluate the --resume checkpoint")
    p.add_argument(
        "--pictures",
        action="store_true",
        help="picture the --resume checkpoint (a `pictures` event; with --eval-only: after it)",
    )
    p.add_argument("--probe", type=int, default=0, metavar="N", help="time N steps and exit")
    p.add_argument(
        "--probe-warmup", type=int, default=2, metavar="W", help="--probe: untimed steps first"
    )
    p.add_argument(
        "--probe-variant",
        dest="probe_variants",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="--probe: also time the config with this one key changed (repeatable)",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="print the device and datasets this config finds, as JSON, and exit",
    )
    p.add_argument(
        "--fetch",
        action="store_true",
        help="with --check: download missing `download: true` datasets first (progress on stderr)",
    )
    args = p.parse_args(argv)
    if args.fetch and not args.check:
        p.error("--fetch goes with --check")
    if args.probe_variants and not args.probe:
        p.error("--probe-variant goes with --probe")
    if not args.check and args.run_dir is None:
        p.error("the following arguments are required: --run-dir")
    return args


def classify(exc: BaseException) -> tuple[str, str | None]:
    """Exception → (fatal kind, feature name or None)."""
    from trainer.checkpoint.store import DiskFullError, NoCheckpointError
    from trainer.data.pipeline import DataMissingError
    from trainer.runtime.device import is_oom
    from trainer.train.faults import FeatureError
    from trainer.train.step import NonFiniteLossError

    if isinstance(exc, DiskFullError):
        return "disk", None
    if isinstance(exc, FeatureError):
        return "feature", exc.feature
    if is_oom(exc):
        return "oom", None
    if isinstance(exc, NonFiniteLossError):
        return "nonfinite", None
    if isinstance(exc, DataMissingError):
        return "data", None
    if isinstance(exc, NoCheckpointError):
        return "resume", None
    if isinstance(exc, ConfigError):
        return "config", None
    return "crash", None


def check_main(args: argparse.Namespace) -> int:
    """``--check``: one JSON document on stdout (see ``trainer/runtime/check.py``), nothing
    written."""
    from trainer.runtime.check import check, config_failure

    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        print(json.dumps(config_failure(args.config, exc)), flush=True)
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    doc = check(cfg, args.config, fetch=args.fetch)
    print(json.dumps(doc), flush=True)
    return 0 if doc["ok"] else 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.check:
        return check_main(args)
    run_dir = Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    rank = int(os.environ.get("RANK", "0"))
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    # With several ranks only fatal events until the writer is elected (Worker.setup).
    quiet = ("fatal",) if several else None
    try:
        cfg = load_config(args.config, args.overrides)
        variants = {
            item: load_config(args.config, [*args.overrides, item]) for item in args.probe_variants
        }
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        em = Emitter(run_dir / EVENTS_FILE, only=quiet)
        em.emit(Fatal(kind="config", message=str(exc), rank=rank))
        em.close()
        return EXIT_USAGE
    if not several:
        write_resolved(cfg, run_dir / RESOLVED_CONFIG_FILE)

    from trainer.train import modes  # heavy imports (torch) after the config is known good
    from trainer.train.loop import Worker

    sinks = []
    if cfg.logging.use_tensorboard:
        from trainer.runtime.tensorboard_log import (
            TensorBoardSink,
            require_tensorboard,
            tensorboard_dir,
        )

        try:
            require_tensorboard()
        except ImportError as exc:
            print(f"error: {exc}", file=sys.stderr)
            em = Emitter(run_dir / EVENTS_FILE, only=quiet)
            em.emit(Fatal(kind="config", message=str(exc), rank=rank))
            em.close()
            return EXIT_USAGE
        sinks.append(TensorBoardSink(tensorboard_dir(run_dir)))
    emitter = Emitter(
        run_dir / EVENTS_FILE, period=cfg.logging.heartbeat_s, only=quiet, sinks=sinks
    )
    worker = Worker(cfg, run_dir, args.resume, emitter)
    emitter._memory = lambda: worker.mem() if hasattr(worker, "device") else {}
    signal.signal(signal.SIGTERM, worker.on_signal)
    signal.signal(signal.SIGINT, worker.on_signal)
    if not several:
        emitter.start()
    try:
        if args.probe:
            if variants:
                result = modes.probe_variants(
                    worker,
                    args.probe,
                    variants,
                    args.probe_warmup,
                    lambda doc: _say(worker.dist.main, doc),
                )
            else:
                result = modes.probe(worker, args.probe, args.probe_warmup)
            _say(worker.dist.main, result)
            code = 0
        else:
            if args.eval_only:
                code = modes.eval_only(worker, pictures=args.pictures)
            elif args.pictures:
                code = modes.pictures_only(worker)
            else:
                code = worker.run()
        worker.dist.close()  # every rank waits for rank 0's last checkpoint and evaluation
        return code
    except BaseException as exc:
        if isinstance(exc, SystemExit):
            raise
        kind, feature = classify(exc)
        message = str(exc) if kind == "disk" else f"{type(exc).__name__}: {exc}"
        # The fatal event first: tearing the process group down can block (NCCL with a dead
        # peer) until the supervisor kills the process, and the exit kind must be on disk.
        epoch, step = worker.where()
        emitter.emit(
            Fatal(
                kind=kind,
                message=message,
                feature=feature,  # type: ignore[arg-type]
                epoch=epoch,
                step=step,
                rank=rank,
            )
        )
        worker.dist.abandon()
        if kind not in ("resume", "disk", "config"):  # those say all in their one line
            traceback.print_exc(file=sys.stderr)
        where = f"rank {rank} " if rank else ""
        print(f"fatal {where}({kind}): {message}", file=sys.stderr)
        return EXIT_CODE_OF_KIND[kind]
    finally:
        emitter.close()


def _say(writer: bool, doc: dict[str, object]) -> None:
    """One JSON line on stdout, from the writer rank only."""
    if writer:
        print(json.dumps(doc), flush=True)


if __name__ == "__main__":
    sys.exit(main())
