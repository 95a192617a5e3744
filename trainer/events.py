"""The seam between worker and orchestrator: event schema, exit codes, control file, run layout.

Nothing else crosses between ``trainer`` and ``orchestrator``. Both import this module (and
``trainer/events_read.py``, its readers); it imports only the standard library and pydantic.

Run directory (``--run-dir DIR``)::

    DIR/events.jsonl           one JSON object per line, append-only, flushed per line
    DIR/config.resolved.yaml   the validated config actually used
    DIR/control.json           written (atomically) by the supervisor, polled by the worker
    DIR/checkpoints/           ckpt-eEEEE-sSSSSSSS.pt + .json sidecar, best.pt(.json)
    DIR/faults.fired.json      one-shot faults already fired (carried across resumes)
    DIR/worker.log             stdout+stderr of the worker (written by whoever launched it)

Every event has ``v`` (schema version), ``type``, ``ts`` (unix wall-clock seconds, for display
and schedules) and ``mono`` (the emitting process's ``time.monotonic()``: system-wide on Linux
and macOS, so a supervisor on the same machine measures silences on it; an NTP step or a laptop
sleep does not move it). Events from writers without ``mono`` fall back to ``ts``.

| type        | fields                                                                       |
|-------------|------------------------------------------------------------------------------|
| started     | pid, config_hash, device, precision, params_total, params_trainable,         |
|             | features {name: "on"/"off"/...}, micro_batch, accum_steps, epochs,           |
|             | steps_per_epoch, epoch_size, datasets {name: samples}, start_epoch,          |
|             | start_step, resumed_from, world_size (ranks; micro_batch and accum_steps are |
|             | one rank's), global_batch (micro × accumulation × world_size)                |
| heartbeat   | phase (startup|loader|data|train|eval|checkpoint), epoch, step, device_mem,   |
|             | progress_age_s (since the main loop last progressed), step_s               |
| step        | epoch, step, loss, loss_levels [..], loss_parts {..}, grad_norm, lr,          |
|             | img_per_s, micro_batch, accum_steps, device_mem, grad_norms? (per module),   |
|             | step_s (recent seconds per optimizer step, data wait included),            |
|             | overflow_steps (steps skipped for gradient overflow so far), loss_scale      |
| epoch_end   | epoch, seconds, steps, mean_loss, total_epochs                               |
| eval        | epoch, knn {"1","5","20"} in [0,1], linear_probe, feature_std,                |
|             | effective_rank, val_loss, seconds, num_samples, linear_probe_l2 (the L2 the   |
|             | probe chose on the training split; at the grid's weak end: extend the grid),  |
|             | feature_variance (mean per-dimension variance: the recipe's "> 0.1"),        |
|             | contrastive_accuracy (loss.use_contrastive: top-1 of the positive pair in    |
|             | the evaluation batch; else null)                                             |
| health      | epoch, step, rank, variance, loss_ema, batch, dim: every                     |
|             | logging.health_every_steps steps, the RankMe and mean per-dimension variance |
|             | of the last batch's pooled target embeddings, and the loss's moving average  |
|             | (trainer/train/health.py; judged by orchestrator/policy/health.py)                |
| checkpoint  | path, epoch, step, verified, seconds, reason (epoch|steps|time|stop|final),  |
|             | problem? (why verification failed). verified: re-read after writing, sha256 |
|             | matches the sidecar, loads with weights_only; false: older ones not pruned  |
| checkpoint_rejected | path, reason  (a corrupt or unreadable checkpoint skipped on resume) |
| resumed     | path, epoch, step, samples_in_epoch, world_size, from_world_size (the         |
|             | checkpoint's; the global batch is the recipe's at any world size)            |
| resume_partial | path, dropped [checkpoint keys the model no longer has], missing [model   |
|             | keys the checkpoint lacks], optimizer (restored|reset), message             |
| best        | path (the checkpoint now best, copied to best.pt), metric, value, epoch, step |
| control     | seq, epochs (new total or null), stop, applied (text)                        |
| pictures    | path (pictures.npz; ""), checkpoint, sha256, epoch, step, indices, seconds,  |
|             | problem ("" or why none): trainer/eval/pictures.py                                |
| fatal       | kind (see FATAL_KINDS), message, feature, epoch, step, rank (of the process |
|             | that failed; ranks > 0 write only this event)                                |
| finished    | reason (completed|stopped), epoch, step, seconds                             |

``started.epochs`` and ``epoch_end.total_epochs`` are the total epochs in force (after every
epoch cut, including one a resume adds when ``training.epochs`` differs from the checkpoint's).
A ``step`` event is emitted for optimizer steps taken; a step skipped for gradient overflow
shows only in the next one's ``overflow_steps``.

``device_mem`` is {"allocated": bytes, "reserved": bytes, "driver": bytes} with the readings
the device offers (CUDA: allocated/reserved; MPS: allocated/driver; CPU: process RSS as
"allocated"), plus "total" on CUDA and MPS: the device's own memory (CUDA total_memory, MPS
recommendedMaxWorkingSetSize), a capacity rather than a reading — the orchestrator's device
ceiling is a fraction of it.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1
GB = 1024**3  # memory fields are bytes; a GB as every log, chart, screen and report counts it

EVENTS_FILE = "events.jsonl"
RESOLVED_CONFIG_FILE = "config.resolved.yaml"
CONTROL_FILE = "control.json"
CHECKPOINT_DIR = "checkpoints"
FAULTS_FIRED_FILE = "faults.fired.json"
WORKER_LOG_FILE = "worker.log"

# ---------------------------------------------------------------------------------------------
# exit codes: one per outcome, so a supervisor can classify an ending without parsing text.
EXIT_OK = 0  # training completed (final checkpoint + final eval written)
EXIT_USAGE = 2  # bad command line or config (ConfigError); no training happened
EXIT_STOPPED = 3  # stop requested (control file, SIGTERM, SIGINT): checkpointed, then exited
EXIT_OOM = 10
EXIT_NONFINITE = 11
EXIT_FEATURE = 12
EXIT_DATA = 13
EXIT_CRASH = 14
EXIT_RESUME = 15  # --resume asked for a checkpoint and none usable exists (never restarts at 0)
EXIT_DISK = 16  # a checkpoint could not be written: no space left on the device

FatalKind = Literal["oom", "nonfinite", "feature", "data", "crash", "config", "resume", "disk"]
FATAL_KINDS: tuple[str, ...] = (
    "oom",
    "nonfinite",
    "feature",
    "data",
    "crash",
    "config",
    "resume",
    "disk",
)
EXIT_CODE_OF_KIND: dict[str, int] = {
    "oom": EXIT_OOM,
    "nonfinite": EXIT_NONFINITE,
    "feature": EXIT_FEATURE,
    "data": EXIT_DATA,
    "crash": EXIT_CRASH,
    "config": EXIT_USAGE,
    "resume": EXIT_RESUME,
    "disk": EXIT_DISK,
}
KIND_OF_EXIT_CODE: dict[int, str] = {v: k for k, v in EXIT_CODE_OF_KIND.items()}

# Out-of-memory texts, the one list: the worker finds them in an exception's lower-cased message
# (``trainer.runtime.device.is_oom``), the supervisor in a fatal message or stderr tail, where the
# OOM_LOG_PATTERNS regexes count too (``orchestrator.policy.classify``). "Killed" alone never does.
OOM_TEXTS: tuple[str, ...] = (
    "out of memory",  # CUDA, "CUDA error: out of memory", HIP, XPU, both MPS variants
    "cudnn_status_not_supported",
    "cublas_status_alloc_failed",
    "defaultcpuallocator: can't allocate memory",
)
OOM_LOG_PATTERNS: tuple[str, ...] = (
    r"^\s*MemoryError\b",  # a Python MemoryError's traceback line
    r"DataLoader worker \(pid \d+\) is killed by signal",  # the host OOM killer's usual victim
)

# "loader": waiting for the first batch of an epoch (loader workers starting); "data": waiting for
# a batch mid-epoch (judged by the step timeout: a data stall is a stalled step).
Phase = Literal["startup", "loader", "data", "train", "eval", "checkpoint"]


class _Event(BaseModel):
    model_config = ConfigDict(extra="allow")
    v: int = SCHEMA_VERSION
    type: str
    ts: float = Field(default_factory=time.time)
    mono: float = Field(default_factory=time.monotonic)


class Started(_Event):
    type: Literal["started"] = "started"
    pid: int
    config_hash: str
    device: str
    precision: str
    params_total: int
    params_trainable: int
    features: dict[str, str]
    micro_batch: int
    accum_steps: int
    epochs: int
    steps_per_epoch: int
    epoch_size: int
    datasets: dict[str, int] = Field(default_factory=dict)
    start_epoch: int = 1
    start_step: int = 0
    resumed_from: str | None = None
    world_size: int = 1
    global_batch: int | None = None


class Heartbeat(_Event):
    type: Literal["heartbeat"] = "heartbeat"
    phase: Phase
    epoch: int = 0
    step: int = 0
    device_mem: dict[str, int] = Field(default_factory=dict)
    step_s: float | None = None


class Step(_Event):
    type: Literal["step"] = "step"
    epoch: int
    step: int
    loss: float
    loss_levels: list[float]
    loss_parts: dict[str, float] = Field(default_factory=dict)
    grad_norm: float
    lr: float
    ema_momentum: float | None = None  # the EMA target's momentum this step ran at
    img_per_s: float
    micro_batch: int
    accum_steps: int
    device_mem: dict[str, int] = Field(default_factory=dict)
    step_s: float | None = None
    overflow_steps: int = 0
    loss_scale: float | None = None


class EpochEnd(_Event):
    type: Literal["epoch_end"] = "epoch_end"
    epoch: int
    seconds: float
    steps: int
    mean_loss: float | None = None
    total_epochs: int


class Eval(_Event):
    type: Literal["eval"] = "eval"
    epoch: int
    knn: dict[str, float]
    linear_probe: float | None
    feature_std: float
    effective_rank: float
    val_loss: float | None = None
    seconds: float = 0.0
    num_samples: int = 0
    linear_probe_l2: float | None = None
    feature_variance: float | None = None
    contrastive_accuracy: float | None = None


class Health(_Event):
    type: Literal["health"] = "health"
    epoch: int
    step: int
    rank: float  # RankMe of the batch's pooled target embeddings, at most min(batch, dim)
    variance: float  # their mean per-dimension variance
    loss_ema: float | None = None  # the training loss's moving average (the trend)
    batch: int = 0
    dim: int = 0


class Checkpoint(_Event):
    type: Literal["checkpoint"] = "checkpoint"
    path: str
    epoch: int
    step: int
    verified: bool = True
    seconds: float = 0.0
    reason: str = "epoch"
    # state_digest of every rank's weights at this checkpoint, in rank order (equal: in sync)
    digests: list[str] = Field(default_factory=list)


class CheckpointRejected(_Event):
    type: Literal["checkpoint_rejected"] = "checkpoint_rejected"
    path: str
    reason: str


class Resumed(_Event):
    type: Literal["resumed"] = "resumed"
    path: str
    epoch: int
    step: int
    samples_in_epoch: int = 0
    world_size: int = 1
    from_world_size: int = 1
    rng: str = ""  # what of the RNG state could not be restored ("" = all of it)


class ResumePartial(_Event):
    """A resume that could not load everything (a feature's weights removed by a fallback)."""

    type: Literal["resume_partial"] = "resume_partial"
    path: str
    dropped: list[str] = Field(default_factory=list)
    missing: list[str] = Field(default_factory=list)
    optimizer: Literal["restored", "reset"] = "restored"
    message: str = ""


class Best(_Event):
    """The checkpoint at ``path`` is now the best by ``metric`` (checkpoint.metric/mode)."""

    type: Literal["best"] = "best"
    path: str
    metric: str
    value: float
    epoch: int
    step: int


class Pictures(_Event):
    type: Literal["pictures"] = "pictures"
    path: str
    checkpoint: str = ""
    sha256: str = ""
    epoch: int | None = None
    step: int | None = None
    indices: list[int] = Field(default_factory=list)
    seconds: float = 0.0
    problem: str = ""


class ControlApplied(_Event):
    type: Literal["control"] = "control"
    seq: int
    epochs: int | None = None
    stop: bool = False
    applied: str = ""


class Fatal(_Event):
    type: Literal["fatal"] = "fatal"
    kind: FatalKind
    message: str
    feature: str | None = None
    epoch: int | None = None
    step: int | None = None
    rank: int = 0


class Finished(_Event):
    type: Literal["finished"] = "finished"
    reason: Literal["completed", "stopped"] = "completed"
    epoch: int
    step: int
    seconds: float = 0.0


EVENT_TYPES: dict[str, type[_Event]] = {
    cls.model_fields["type"].default: cls
    for cls in (
        Started,
        Heartbeat,
        Step,
        EpochEnd,
        Eval,
        Health,
        Checkpoint,
        CheckpointRejected,
        Resumed,
        ResumePartial,
        Best,
        Pictures,
        ControlApplied,
        Fatal,
        Finished,
    )
}


# ---------------------------------------------------------------------------------------------
# control file
class Control(BaseModel):
    """Supervisor → live worker. ``seq`` increases with every write; the worker acts once per seq.

    ``epochs``: new total epochs (LR/EMA schedules are rescaled to end there; never below the
    epoch in progress). ``stop``: checkpoint at the next step boundary, then exit EXIT_STOPPED.
    ``final_eval`` (with ``stop``): run the final evaluation (an ``eval`` event) after that
    checkpoint and before exiting, so a night stopped at its deadline still ends evaluated.
    """

    model_config = ConfigDict(extra="forbid")
    seq: int
    epochs: int | None = Field(None, ge=1)
    stop: bool = False
    final_eval: bool = False


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write via temp file + fsync + rename + fsync(dir): readers see old or new, never half."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", dir=p.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(p.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_control(run_dir: str | Path, control: Control) -> None:
    atomic_write_text(Path(run_dir) / CONTROL_FILE, control.model_dump_json())


def read_control(run_dir: str | Path) -> Control | None:
    p = Path(run_dir) / CONTROL_FILE
    try:
        return Control.model_validate_json(p.read_text())
    except (FileNotFoundError, ValueError):
        return None
