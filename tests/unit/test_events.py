"""Event stream parsing and the control file."""

import json

import trainer.events as ev
from trainer.events import EVENT_TYPES, Control, Heartbeat, read_control, write_control
from trainer.events_read import EventTail, read_events
from trainer.runtime.emitter import Emitter


def _event_classes() -> set[type]:
    found, todo = set(), [ev._Event]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub.__module__ == ev.__name__ and sub not in found:
                found.add(sub)
                todo.append(sub)
    return found


def test_every_event_class_is_registered_once_under_its_own_type():
    """A new event class left out of ``EVENT_TYPES``, or two classes sharing one ``type`` (the
    table is built from the literals, so the second would silently replace the first), fails."""
    assert set(EVENT_TYPES.values()) == _event_classes()
    assert len(EVENT_TYPES) == len(_event_classes())


def test_an_emitted_event_reads_back_with_version_type_and_time(tmp_path):
    """What the worker writes is what the supervisor reads: the schema version, the type, a
    wall-clock and a monotonic time and the event's own fields, one JSON line each."""
    em = Emitter(tmp_path / "events.jsonl")
    em.emit(Heartbeat(phase="eval", epoch=2, step=7, ts=1000.5, mono=20.25))
    em.emit(ev.Fatal(kind="oom", message="CUDA out of memory", step=7, ts=1001.0))
    hb, fatal = read_events(tmp_path / "events.jsonl")
    assert hb == {
        "v": ev.SCHEMA_VERSION, "type": "heartbeat", "ts": 1000.5, "mono": 20.25,
        "phase": "eval", "epoch": 2, "step": 7, "device_mem": {}, "step_s": None,
    }  # fmt: skip
    assert (fatal["v"], fatal["type"], fatal["kind"], fatal["ts"]) == (
        ev.SCHEMA_VERSION, "fatal", "oom", 1001.0,
    )  # fmt: skip


def test_tail_returns_only_complete_lines(tmp_path):
    p = tmp_path / "events.jsonl"
    tail = EventTail(p)
    assert tail.poll() == []
    hb = Heartbeat(phase="train", epoch=1, step=3).model_dump_json()
    p.write_text(hb + "\n" + hb[:10])
    assert [e["step"] for e in tail.poll()] == [3]
    with p.open("a") as fh:
        fh.write(hb[10:] + "\n{garbage\n")
    got = tail.poll()
    assert len(got) == 1 and got[0]["type"] == "heartbeat"


def test_read_events_skips_truncated_last_line(tmp_path):
    p = tmp_path / "events.jsonl"
    line = json.dumps({"v": 1, "type": "step", "ts": 1.0, "step": 1})
    p.write_text(line + "\n" + line[:-3])
    assert len(read_events(p)) == 1


def test_control_round_trip_and_bad_file(tmp_path):
    assert read_control(tmp_path) is None
    write_control(tmp_path, Control(seq=2, epochs=5, stop=False))
    c = read_control(tmp_path)
    assert c.seq == 2 and c.epochs == 5 and not c.stop
    (tmp_path / "control.json").write_text("{not json")
    assert read_control(tmp_path) is None
