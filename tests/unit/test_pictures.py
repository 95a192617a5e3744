"""End-of-night pictures: the last block's attention is the one the block computes, the maps
have the patch grid's shape (one FPN map per level), a checkpoint's pictures are matched to
the night's best by its bytes, and the morning report draws readable PNGs — or says why not."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from orchestrator.core.fold import RunFold
from orchestrator.core.state import read_snapshot
from orchestrator.night.pictures import picture_evidence, pictures_of
from orchestrator.views.report.facts import NightFacts
from orchestrator.views.report.pictures import picture_links
from orchestrator.views.report.write import write_report
from trainer.checkpoint import store as ckpt
from trainer.config import load_config
from trainer.data.pipeline import build_eval_data
from trainer.eval import pictures as P
from trainer.model.hjepa import build_model
from trainer.model.vit import Block

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "states"
SMALL = [
    "data.synthetic.num_eval_train=32",
    "data.synthetic.num_eval_test=32",
    "evaluation.max_train_samples=32",
    "evaluation.max_test_samples=32",
    "model.embed_dim=48",
    "model.depth=2",
    "model.fpn.feature_dim=48",
    "model.predictor.embed_dim=48",
    "model.predictor.depth=1",
]


def tiny(recipe: str, *sets: str) -> tuple:
    cfg = load_config(ROOT / "configs" / f"demo_{recipe}.yaml", [*SMALL, *sets])
    _, test = build_eval_data(cfg)
    return cfg, build_model(cfg), test


@pytest.mark.parametrize("use_sdpa", [True, False])
def test_attention_weights_are_the_ones_the_block_applies(use_sdpa: bool) -> None:
    torch.manual_seed(0)
    blk = Block(48, 3, 2.0, use_sdpa=use_sdpa, layerscale_init=0.1).eval()
    x = torch.randn(2, 16, 48)
    w = P.attention_weights(blk, x)
    assert w.shape == (2, 3, 16, 16)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 3, 16))
    # the weights times the block's values give the block's own attention output (SDPA or not)
    attn = blk.attn
    v = attn.qkv(blk.norm1(x)).reshape(2, 16, 3, 3, 16).permute(2, 0, 3, 1, 4)[2]
    mixed = attn.proj((w @ v).transpose(1, 2).reshape(2, 16, 48))
    torch.testing.assert_close(mixed, attn(blk.norm1(x)), rtol=1e-4, atol=1e-5)
    received = P.attention_received(w)
    torch.testing.assert_close(received.sum(-1), torch.ones(2))


@pytest.mark.parametrize(
    ("recipe", "sets", "levels"),
    [
        ("conservative", [], 0),  # flash on, no FPN
        ("aggressive", [], 3),  # flash, gradient checkpointing and FPN on
        (
            "aggressive",
            [
                "model.use_flash_attention=false",
                "model.num_hierarchies=2",
                "loss.hierarchy_weights=[1.0,0.5]",
            ],
            2,
        ),
    ],
)
def test_maps_have_the_patch_grid_shape(recipe: str, sets: list[str], levels: int) -> None:
    cfg, model, test = tiny(recipe, *sets)
    model.train()  # as the worker leaves it: the pictures switch to eval and back
    maps = P.compute_maps(model, cfg, test, torch.device("cpu"))
    g = cfg.data.image_size // cfg.model.patch_size
    assert model.training and model.target_encoder.training
    assert maps["indices"].tolist() == P.fixed_indices(len(test)) == [0, 8, 16, 24]
    assert maps["images"].shape == maps["masks"].shape == (4, 32, 32, 3)
    assert maps["images"].dtype == np.uint8
    assert maps["attention"].shape == (4, g, g)
    np.testing.assert_allclose(maps["attention"].sum(axis=(1, 2)), 1.0, rtol=1e-5)
    assert maps["fpn"].shape == (levels, 4, g, g)
    if levels:  # a norm map, not the flat one after the output LayerNorm
        assert (maps["fpn"] > 0).all() and maps["fpn"].std(axis=(2, 3)).min() > 1e-3
    # the masks: target patches tinted red, so the mask image differs from the image
    assert (maps["masks"] != maps["images"]).any()
    again = P.compute_maps(model, cfg, test, torch.device("cpu"))
    np.testing.assert_array_equal(again["masks"], maps["masks"])  # the same every night


def test_a_checkpoint_is_pictured_and_matched_to_the_nights_best(tmp_path: Path) -> None:
    cfg, model, test = tiny("aggressive")
    writer = ckpt.CheckpointWriter(tmp_path / "checkpoints", 2)
    saved = writer.save({"model": model.state_dict()}, {"epoch": 3, "step": 30})
    best = writer.mark_best(saved.path, "knn", 0.5)
    path, in_memory = P.pick_checkpoint(tmp_path / "checkpoints", saved.path)
    assert path == best and in_memory  # best.pt is a copy of the final checkpoint
    fresh = build_model(load_config(ROOT / "configs" / "demo_aggressive.yaml", [*SMALL,
                                    "experiment.seed=7"]))  # fmt: skip
    ev = P.make_pictures(fresh, cfg, test, torch.device("cpu"), best, tmp_path / "pictures")
    assert ev.problem == "" and ev.epoch == 3 and Path(ev.path).is_file()
    with np.load(ev.path) as z:
        assert z["fpn"].shape[0] == 3 and z["indices"].tolist() == ev.indices
    for k, v in model.target_encoder.state_dict().items():  # the checkpoint's weights loaded
        torch.testing.assert_close(fresh.target_encoder.state_dict()[k], v)
    fold = RunFold()
    fold.feed(1, [json.loads(ev.model_dump_json())])
    # the night's best may be named by the original file: same bytes, same pictures
    assert pictures_of([fold.view()], str(saved.path)) is not None
    other = writer.save({"model": fresh.state_dict(), "x": torch.ones(1)}, {"epoch": 4, "step": 40})
    assert pictures_of([fold.view()], str(other.path)) is None
    assert pictures_of([fold.view()], None) is None


def test_a_failed_picture_is_an_event_not_an_exception(tmp_path: Path) -> None:
    cfg, model, test = tiny("conservative")
    ev = P.make_pictures(model, cfg, test, torch.device("cpu"), None, tmp_path)
    assert ev.path == "" and "no checkpoint" in ev.problem
    broken = tmp_path / "ckpt-e0001-s00000001.pt"
    broken.write_bytes(b"not a checkpoint")
    ev = P.make_pictures(model, cfg, test, torch.device("cpu"), broken, tmp_path)
    assert ev.path == "" and "CorruptCheckpointError" in ev.problem
    assert not (tmp_path / P.PICTURES_FILE).exists()
    evidence = picture_evidence(None, str(broken), ev.problem)
    assert evidence["problem"] == ev.problem and evidence["path"] is None


def _with_pictures(tmp_path: Path, evidence: dict) -> Path:
    var = tmp_path / "plan-success"
    shutil.copytree(FIXTURES / "plan-success", var)
    state = json.loads((var / "state.json").read_text())
    state["nights"][1]["decisions"].append(
        {"kind": "pictures", "trigger": "pictures", "action": "x", "at": state["nights"][1]
         ["ended_at"], "evidence": evidence}
    )  # fmt: skip
    (var / "state.json").write_text(json.dumps(state))
    return var


def test_report_links_readable_pngs_with_captions(tmp_path: Path) -> None:
    cfg, model, test = tiny("aggressive")
    npz = tmp_path / "pictures.npz"
    P.save_arrays(npz, P.compute_maps(model, cfg, test, torch.device("cpu")))
    var = _with_pictures(
        tmp_path,
        picture_evidence(
            {"path": str(npz), "epoch": 6, "step": 384, "indices": [0, 8, 16, 24]},
            "/x/runs/n2/attempt-01/checkpoints/best.pt",
            "",
        ),
    )
    report = write_report(var)
    text = report.read_text()
    night2 = text.split("## Night 2")[1]
    assert "Pictures missing: none recorded yet" in text.split("## Night 2")[0]  # night 1
    links = re.findall(r"!\[[^\]]*\]\(([^)]+-n2-(?:attention|fpn)\.png)\)", night2)
    assert [Path(n).name.split("-n2-")[1] for n in links] == ["attention.png", "fpn.png"]
    assert "`best.pt` (epoch 6, step 384)" in night2 and "mean attention each patch" in night2
    for name in links:
        assert "/" not in name  # relative, beside the report
        caption = night2.split(f"({name})", 1)[1].strip().splitlines()[0]
        assert caption.startswith("_") and len(caption) > 40
        with Image.open(report.parent / name) as im:
            im.verify()
        with Image.open(report.parent / name) as im:
            assert im.size[0] > 300 and im.size[1] > 300


@pytest.mark.parametrize(
    ("evidence", "says"),
    [
        ({"path": None, "problem": "the night wrote no checkpoint"}, "the night wrote no"),
        ({"path": "/nowhere/pictures.npz", "problem": ""}, "is gone"),
    ],
)
def test_report_says_why_pictures_are_missing(tmp_path: Path, evidence: dict, says: str) -> None:
    var = _with_pictures(tmp_path, evidence)
    state = read_snapshot(var)
    assert state is not None
    out = var / "reports" / "morning-x.md"
    lines = picture_links(NightFacts(var, state, state.nights[1]), out)
    assert lines[0].startswith("_Pictures missing:") and says in lines[0]
    assert not out.parent.exists()  # nothing drawn
