"""Event stream parsing and the control file."""

import json

from trainer.events import EVENT_TYPES, Control, Heartbeat, read_control, write_control
from trainer.events_read import EventTail, read_events


def test_every_event_has_v_type_ts():
    for name, cls in EVENT_TYPES.items():
        fields = cls.model_fields
        assert {"v", "type", "ts"} <= set(fields), name


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
