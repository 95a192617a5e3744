"""Fuzz the command line: every verb gets malformed configs, plans, state files, windows,
widths and paths (Hypothesis, derandomized, a fixed number of cases), and three invariants
hold for each case:

1. no traceback: the command returns (or argparse exits 2) with one-line errors on stderr;
   a bad input is exit 2 (``preflight``'s "not ready" is its documented 1);
2. no file the user gave is modified (no verb here exists to modify one: ``preflight
   --apply`` is tested round-trip in tests/unit/test_user_files.py);
3. the state dir still parses: ``state.json`` is absent, valid, or byte-identical to the
   malformed one given (only ``start``/``run`` may set a corrupt one aside, and they say so).

The inputs never form a runnable night (the config, plan or window is always broken), so no
case trains or detaches a daemon. ``main`` runs in-process; a few cases run as subprocesses
to see what a user's shell sees.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.cli import main
from orchestrator.core.state import StateError, StateStore
from tests.workerutil import ROOT, env

pytestmark = pytest.mark.slow  # real processes


GOOD_CONFIG = (ROOT / "configs" / "demo_conservative.yaml").read_text(encoding="utf-8")
GOOD_PLAN = (ROOT / "configs" / "plans" / "demo.yaml").read_text(encoding="utf-8")

BROKEN_TEXT = st.sampled_from(
    [
        b"",
        b"null\n",
        b"- a\n- b\n",
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
        b"name: caf\xe9\n",
        b"\xff\xfe\x00n\x00a\x00m\x00e\x00",
        b"key: [unclosed\n",
        b"\tkey: tab\n",
        b"a: " + b"[" * 200 + b"]" * 200 + b"\n",
        b"experiment: {name: x}\nnot_a_key: 1\n",
        b"model: 5\n",
        b"training: {epochs: 1e400}\n",
        (GOOD_CONFIG + "\nsurprise: true\n").encode(),
        GOOD_CONFIG.replace("embed_dim: 96", "embed_dim: -3").encode(),
        GOOD_CONFIG.replace("batch_size:", "batch_size: 'lots' #").encode(),
        (GOOD_PLAN + "\nextra_key: 1\n").encode(),
        GOOD_PLAN.replace("window: 4m", "window: 0m").encode(),
        GOOD_PLAN.replace("window: 4m", "window: 99999999h").encode(),
        GOOD_PLAN.replace("configs/demo_conservative.yaml", "../../etc/passwd").encode(),
    ]
)
BROKEN_STATE = st.sampled_from(
    [
        None,
        b"",
        b"null",
        b"[]",
        b"{",
        b"\x00\x01",
        b'{"schema_version": 99, "nights": []}',
        b'{"schema_version": 1, "nights": [{"name": 5}]}',
        b'{"schema_version": "1"}',
        b'{"schema_version": 1, "nights": [], "surprise": 1}',
    ]
)
WINDOWS = st.sampled_from(["1s", "0m", "-5m", "8x", "", "1e400s", "99999999h", "8d", "nan", "h"])
WIDTHS = st.sampled_from(["-5", "0", "3", "100000", "abc", "1e3", "80"])


def _verbs(cfg: str, plan: str, sd: str, window: str, width: str, f: str) -> list[list[str]]:
    return [
        ["run", "--config", cfg, "--state-dir", sd, "--window", "5m", "--no-tui"],
        [
            "run",
            "--config",
            str(ROOT / "configs/demo_conservative.yaml"),
            "--state-dir",
            sd,
            "--window",
            window,
            "--no-tui",
        ],
        ["start", "--plan", plan, "--state-dir", sd],
        ["status", "--once", "--state-dir", sd, f"--width={width}"],
        ["status", "--json", "--state-dir", sd],
        ["report", "--state-dir", sd],
        ["report", "--state-dir", sd, "--out", f],
        ["stop", "--state-dir", sd, "--timeout", "1"],
        ["init", f],
        ["join", "--config", cfg, "--node-rank", "1", "--state-dir", sd, "--once"],
        ["preflight", "--config", cfg, "--state-dir", sd, "--window", window],
        ["run", "--config", cfg, "--state-dir", f],
        ["start", "--plan", plan, "--state-dir", f],
    ]


def _files(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _check_state(sd: Path, given_state: bytes | None) -> None:
    path = sd / "state.json"
    if not path.exists():
        return
    if given_state is not None and path.read_bytes() == given_state:
        return
    try:
        StateStore(sd).load(set_aside=False)
    except StateError as exc:
        pytest.fail(f"state dir no longer parses: {exc}")


@settings(
    max_examples=90,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    user_text=BROKEN_TEXT,
    state=BROKEN_STATE,
    window=WINDOWS,
    width=WIDTHS,
    which=st.integers(min_value=0, max_value=12),
)
def test_the_command_line_holds_its_invariants(
    user_text: bytes, state: bytes | None, window: str, width: str, which: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        user = root / "user"
        user.mkdir()
        cfg, plan, afile = user / "my config.yaml", user / "plan.yaml", user / "afile"
        cfg.write_bytes(user_text)
        plan.write_bytes(user_text)
        afile.write_bytes(b"my notes\n")
        sd = root / "var"
        sd.mkdir()
        if state is not None:
            (sd / "state.json").write_bytes(state)
        argv = _verbs(str(cfg), str(plan), str(sd), window, width, str(afile))[which]
        before = _files(user)
        err, out = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                rc = main(argv)
            except SystemExit as exc:  # argparse: usage error
                rc = int(exc.code or 0)
        text = err.getvalue()
        assert "Traceback" not in text, (argv, text)
        allowed = (1, 2) if argv[0] in ("preflight", "status", "report", "stop") else (2,)
        if argv[0] == "status" and width == "80":
            allowed = (0, 1)  # a valid width: the frame shows the state's problem
        if argv[0] == "status" and "--json" in argv:
            allowed = (0, 1)
        if argv[0] == "stop":
            allowed = (0, 1, 2)
        if argv[0] == "start" and rc == 0:  # a valid plan (the shipped demo's text): accepted
            with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(out):
                assert main(["stop", "--state-dir", str(sd), "--timeout", "60"]) == 0
            allowed = (0,)
        assert rc in allowed, (argv, rc, text[-500:], out.getvalue()[-500:])
        if rc:
            assert text.strip() or out.getvalue().strip(), (argv, "failed silently")
        assert _files(user) == before, (argv, "a user file changed")
        _check_state(sd, state)


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--config", "{bin}", "--state-dir", "{sd}"],
        ["status", "--once", "--state-dir", "{sd}", "--width=-5"],
        ["report", "--state-dir", "{sd}"],
    ],
)
def test_in_a_shell_bad_input_is_one_line_and_exit_2_or_1(tmp_path: Path, argv: list[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"\x89PNG\x00\x00binary")
    sd = tmp_path / "var"
    sd.mkdir()
    (sd / "state.json").write_text(json.dumps({"schema_version": 99}), encoding="utf-8")
    cmd = [a.replace("{bin}", str(bad)).replace("{sd}", str(sd)) for a in argv]
    got = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *cmd],
        capture_output=True, text=True, cwd=ROOT, env={**env(), "PYTHONIOENCODING": "ascii"},
    )  # fmt: skip
    assert got.returncode in (1, 2), got
    assert "Traceback" not in got.stderr, got.stderr
    assert len(got.stderr.strip().splitlines()) == 1, got.stderr
    assert bad.read_bytes() == b"\x89PNG\x00\x00binary"
