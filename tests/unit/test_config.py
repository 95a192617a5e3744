"""Config schema: strictness, error messages, overrides, upstream spellings."""

from pathlib import Path

import pytest
import yaml

from trainer.config import Config, ConfigError, load_config, parse_override

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def write(tmp_path: Path, data: dict, name: str = "c.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


BASE = {
    "data": {"datasets": [{"name": "synthetic"}], "image_size": 32},
    "model": {
        "encoder_type": "custom",
        "embed_dim": 48,
        "depth": 2,
        "num_heads": 3,
        "patch_size": 8,
    },
}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_validate(path):
    cfg = load_config(path)
    assert cfg.data.datasets


def test_typo_names_file_and_key(tmp_path):
    p = write(tmp_path, {**BASE, "training": {"epocs": 3}})
    with pytest.raises(ConfigError) as err:
        load_config(p)
    text = str(err.value)
    assert str(p) in text and "training.epocs" in text and "unknown key" in text


def test_set_override_typo_is_an_error_naming_the_key(tmp_path):
    p = write(tmp_path, BASE)
    with pytest.raises(ConfigError) as err:
        load_config(p, ["model.use_fpm=true"])
    assert "model.use_fpm" in str(err.value) and "--set" in str(err.value)


def test_set_override_values_are_yaml(tmp_path):
    p = write(tmp_path, BASE)
    cfg = load_config(
        p,
        [
            "training.lr=1e-4",
            "training.betas=[0.8, 0.9]",
            "model.use_fpn=true",
            "data.batch_size=7",
        ],
    )
    assert cfg.training.lr == pytest.approx(1e-4)
    assert cfg.training.betas == (0.8, 0.9)
    assert cfg.model.use_fpn is True and cfg.data.batch_size == 7


def test_override_bad_value_type_is_clear(tmp_path):
    p = write(tmp_path, BASE)
    with pytest.raises(ConfigError, match=r"data\.batch_size"):
        load_config(p, ["data.batch_size=lots"])


def test_parse_override_needs_equals():
    with pytest.raises(ConfigError):
        parse_override("training.lr")
    assert parse_override("a.b=") == (["a", "b"], None)


def test_yaml_exponent_floats_are_numbers(tmp_path):
    p = write(tmp_path, BASE)
    p.write_text(p.read_text() + "training:\n  lr: 1.5e-4\n")
    assert load_config(p).training.lr == pytest.approx(1.5e-4)


def test_single_dataset_spelling_folds_into_datasets():
    cfg = Config.model_validate(
        {
            **BASE,
            "data": {"dataset": "imagenet100", "data_path": "./data/imagenet", "image_size": 32},
        }
    )
    assert [(d.name, d.path) for d in cfg.data.datasets] == [("imagenet100", "./data/imagenet")]


def test_use_multi_dataset_must_match():
    with pytest.raises(ValueError, match="use_multi_dataset"):
        Config.model_validate(
            {
                **BASE,
                "data": {
                    "use_multi_dataset": True,
                    "image_size": 32,
                    "datasets": [{"name": "synthetic"}],
                },
            }
        )


def test_fpn_nested_alias_and_contradiction():
    cfg = Config.model_validate({**BASE, "model": {**BASE["model"], "fpn": {"use_fpn": True}}})
    assert cfg.model.use_fpn is True
    with pytest.raises(ValueError, match="disagree"):
        Config.model_validate(
            {**BASE, "model": {**BASE["model"], "use_fpn": False, "fpn": {"use_fpn": True}}}
        )


def test_preset_fills_sizes_and_rejects_contradiction():
    cfg = Config.model_validate(
        {
            "data": BASE["data"] | {"image_size": 224},
            "model": {"encoder_type": "vit_small_patch16_224"},
        }
    )
    assert (cfg.model.embed_dim, cfg.model.depth, cfg.model.num_heads) == (384, 12, 6)
    with pytest.raises(ValueError, match="contradicts"):
        Config.model_validate(
            {
                "data": BASE["data"] | {"image_size": 224},
                "model": {"encoder_type": "vit_small_patch16_224", "embed_dim": 192},
            }
        )


def test_unsupported_switches_refuse_on():
    for extra in (
        {"model": {**BASE["model"], "rope": {"use_rope": True}}},
        {"logging": {"use_wandb": True}},
        {"logging": {"log_attention": True}},
    ):
        with pytest.raises(ValueError):
            Config.model_validate({**BASE, **extra})


def test_hierarchy_weights_must_match_levels():
    with pytest.raises(ValueError, match="hierarchy_weights"):
        Config.model_validate({**BASE, "model": {**BASE["model"], "num_hierarchies": 2}})


def test_transforms_fold_into_augmentation():
    cfg = Config.model_validate(
        {
            **BASE,
            "data": {**BASE["data"], "transforms": {"crop_scale": [0.5, 1.0], "color_jitter": 0.1}},
        }
    )
    assert cfg.data.augmentation.crop_scale == (0.5, 1.0)
    assert cfg.data.augmentation.color_jitter == 0.1


def test_hash_ignores_faults_but_not_lr():
    a = Config.model_validate(BASE)
    b = Config.model_validate({**BASE, "faults": {"step_delay_s": 1.0}})
    c = Config.model_validate({**BASE, "training": {"lr": 0.01}})
    assert a.hash() == b.hash() != c.hash()


def test_precision_key_and_its_contradiction_with_use_amp(tmp_path):
    path = write(tmp_path, BASE)
    assert load_config(path).training.precision == "auto"
    assert load_config(path, ["training.precision=fp16"]).training.precision == "fp16"
    assert load_config(path, ["training.use_amp=false"]).training.precision == "auto"
    with pytest.raises(ConfigError) as err:
        load_config(path, ["training.use_amp=false", "training.precision=fp16"])
    assert "training.use_amp: false contradicts training.precision: fp16" in str(err.value)
    assert "c.yaml" in str(err.value)
    with pytest.raises(ConfigError, match="precision"):
        load_config(path, ["training.precision=fp8"])


def test_new_training_checkpoint_and_fault_keys(tmp_path):
    path = write(tmp_path, BASE)
    cfg = load_config(path)
    assert cfg.training.max_consecutive_overflows == 25
    assert cfg.checkpoint.every_minutes is None and cfg.faults.grad_overflow_steps == 1
    cfg = load_config(
        path,
        [
            "checkpoint.every_minutes=0.5",
            "faults.grad_overflow_at_step=4",
            "faults.grad_overflow_steps=3",
            "faults.oom_at_step=2",
            "faults.raise_in_feature=fpn",
            "faults.raise_in_feature_after_step=6",
        ],
    )
    assert cfg.checkpoint.every_minutes == 0.5 and cfg.faults.grad_overflow_steps == 3
    for bad in (
        "training.max_consecutive_overflows=0",
        "checkpoint.every_minutes=0",
        "faults.grad_overflow_steps=0",
    ):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            load_config(path, [bad])


@pytest.mark.parametrize("name", ["demo_aggressive.yaml", "overnight_training_aggressive.yaml"])
def test_contrastive_off_under_cjepa_is_the_plain_jepa_loss(name):
    cfg = load_config(ROOT / "configs" / name, ["loss.use_contrastive=false"])
    assert cfg.loss.type == "cjepa" and not cfg.loss.use_contrastive
    assert cfg.loss.distance == cfg.loss.jepa_loss_type


@pytest.mark.parametrize(
    "name", ["overnight_training_conservative.yaml", "overnight_training_aggressive.yaml"]
)
def test_overnight_recipes_checkpoint_by_time(name):
    c = load_config(ROOT / "configs" / name).checkpoint
    assert c.every_minutes is not None and c.every_minutes <= 20 and c.keep_last_k >= 6


def test_a_fault_in_a_feature_that_does_not_exist_is_an_error_not_a_fault_that_never_fires() -> (
    None
):
    demo = ROOT / "configs" / "demo_conservative.yaml"
    with pytest.raises(ConfigError, match=r"faults\.raise_in_feature"):
        load_config(demo, overrides=["faults.raise_in_feature=fpnn"])
    assert load_config(demo, overrides=["faults.raise_in_feature=fpn"]).faults.raise_in_feature
