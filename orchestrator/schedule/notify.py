"""Tell the person: run a command when a night ends, a fallback is applied, or a night fails.

    # in a plan file
    notify: {command: "ntfy publish mytopic", on: [night_end, fallback, failed], timeout_s: 10}

The command runs through ``/bin/sh -c`` with the one-line message appended as its last
argument, so ``terminal-notifier -message``, ``ntfy publish TOPIC`` or a mail script work as
they are; the same facts are in the environment: ``HJEPA_EVENT`` (night_end | fallback |
failed), ``HJEPA_NIGHT`` (name), ``HJEPA_NIGHT_INDEX`` (1-based), ``HJEPA_STATUS`` (the
night's status), ``HJEPA_MESSAGE`` (the line), ``HJEPA_STATE_DIR``; a fallback adds
``HJEPA_TRIGGER`` and ``HJEPA_ACTION``.

:class:`Notifier` is a state observer (``run_night(..., on_update=notifier)``): it gets the
State after every save, derives the notifications the state implies (:func:`pending_notes`,
pure: one per fallback recorded, one ``night_end`` per ended night, one ``failed`` per failed
night, each with a stable key), and sends the ones it has not sent. What it sends is appended
to ``STATE_DIR/notify.jsonl`` *before* the command starts, so a restarted daemon does not
resend. The commands run one at a time, in the order the notes arose, on a sender thread of
their own, each with a timeout (the night never waits for them); a failure, a timeout or a missing
program is logged (and recorded in the log file) and never reaches the night.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.core.state import ENDED, Night, State, now_iso

log = logging.getLogger(__name__)
NOTIFY_LOG = "notify.jsonl"
NotifyEvent = Literal["night_end", "fallback", "failed"]
ALL_EVENTS: tuple[NotifyEvent, ...] = ("night_end", "fallback", "failed")
NIGHT_ENDED = ENDED  # a night that ended (core.state.TRANSITIONS)


class NotifySpec(BaseModel):
    """The ``notify:`` section of a plan."""

    model_config = ConfigDict(extra="forbid")
    command: str = Field(min_length=1, description="Shell command; the message is appended.")
    on: list[NotifyEvent] = Field(
        default_factory=lambda: list(ALL_EVENTS), description="Which events to send."
    )
    timeout_s: float = Field(10.0, gt=0, description="Kill the command after this long.")


@dataclass(frozen=True)
class Note:
    key: str  # stable across restarts: event, night index, fallback index
    event: str
    night: Night
    message: str
    extra: tuple[tuple[str, str], ...] = ()


def pending_notes(state: State) -> list[Note]:
    """Every notification the state implies, in order (sent or not)."""
    notes: list[Note] = []
    for n in state.nights:
        label = f"night {n.index + 1} {n.name}"
        for i, fb in enumerate(n.fallbacks):
            msg = f"hjepa-night: {label}: fallback {fb.trigger}: {fb.action}"
            extra = (("HJEPA_TRIGGER", fb.trigger), ("HJEPA_ACTION", fb.action))
            notes.append(Note(f"fallback:{n.index}:{i}", "fallback", n, msg, extra))
        if n.status in NIGHT_ENDED:
            level = f", success {n.success.level}" if n.success else ""
            why = f" ({n.reason})" if n.reason else ""
            msg = f"hjepa-night: {label} {n.status}{level}{why}"
            notes.append(Note(f"night_end:{n.index}", "night_end", n, msg))
            if n.status == "failed":
                notes.append(Note(f"failed:{n.index}", "failed", n, msg))
    return notes


def read_sent(state_dir: str | Path) -> list[dict[str, Any]]:
    """The records of ``notify.jsonl`` (unreadable lines skipped)."""
    try:
        lines = (Path(state_dir) / NOTIFY_LOG).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        try:
            out.append(dict(json.loads(line)))
        except (ValueError, TypeError):
            continue
    return out


class Notifier:
    """State observer that sends each new notification once (see the module docstring)."""

    def __init__(self, spec: NotifySpec, state_dir: str | Path) -> None:
        self.spec, self.state_dir = spec, Path(state_dir)
        self.sent = {str(r.get("key")) for r in read_sent(self.state_dir)}
        self.threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._queue: list[tuple[Note, dict[str, str]]] = []  # to send, oldest first
        self._sender: threading.Thread | None = None

    def __call__(self, state: State) -> None:
        try:
            with self._lock:
                for note in pending_notes(state):
                    if note.key in self.sent:
                        continue
                    self.sent.add(note.key)
                    if note.event in self.spec.on:
                        self._send(note)
        except Exception:  # a notifier must never break the night
            log.exception("notify: observer failed")

    def _send(self, note: Note) -> None:
        rec = {"key": note.key, "event": note.event, "night": note.night.name,
               "message": note.message, "at": now_iso()}  # fmt: skip
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with (self.state_dir / NOTIFY_LOG).open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(rec) + "\n")
        env = dict(os.environ)
        env.update({"HJEPA_EVENT": note.event, "HJEPA_NIGHT": note.night.name,
                    "HJEPA_NIGHT_INDEX": str(note.night.index + 1),
                    "HJEPA_STATUS": note.night.status, "HJEPA_MESSAGE": note.message,
                    "HJEPA_STATE_DIR": str(self.state_dir), **dict(note.extra)})  # fmt: skip
        self._queue.append((note, env))
        if self._sender is None or not self._sender.is_alive():
            # One sender at a time, so messages arrive in the order things happened (a fallback
            # before the night's end); not a daemon thread: a night_end queued as the process
            # ends is still sent. It exits when the queue is empty.
            self._sender = threading.Thread(target=self._drain, name="notify-sender")
            self._sender.start()
            self.threads.append(self._sender)

    def _drain(self) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    self._sender = None
                    return
                note, env = self._queue.pop(0)
            self._run(note, env)

    def _run(self, note: Note, env: dict[str, str]) -> None:
        cmd = ["/bin/sh", "-c", self.spec.command + ' "$@"', "hjepa-notify", note.message]
        try:
            out = subprocess.run(cmd, env=env, capture_output=True, text=True,
                                 timeout=self.spec.timeout_s, check=False)  # fmt: skip
        except subprocess.TimeoutExpired:
            log.warning("notify %s: command timed out after %gs", note.key, self.spec.timeout_s)
            return
        except OSError as exc:
            log.warning("notify %s: command could not start: %s", note.key, exc)
            return
        if out.returncode != 0:
            tail = (out.stderr or out.stdout).strip().splitlines()[-1:] or [""]
            log.warning("notify %s: command exited %d: %s", note.key, out.returncode, tail[0])

    def wait(self, timeout: float | None = None) -> None:
        """Join the sender threads (tests, and a clean exit)."""
        for t in list(self.threads):
            t.join(timeout)


def with_notifier(night_fn: Callable[..., Any], notifier: Notifier | None) -> Callable[..., Any]:
    """``night_fn`` with ``on_update=notifier`` added (unchanged when there is no notifier)."""
    if notifier is None:
        return night_fn

    def run(store: Any, index: int, **kw: Any) -> Any:
        return night_fn(store, index, on_update=notifier, **kw)

    return run


def report_lines(state_dir: str | Path) -> list[str]:
    """The report's list of what was sent (empty when nothing was)."""
    sent = read_sent(state_dir)
    if not sent:
        return []
    lines = [f"- {r.get('at', '?')} **{r.get('event')}**: {r.get('message')}" for r in sent]
    return ["## Notifications sent", "", *lines, ""]
