"""Bench helpers: fake CIFAR files the trainer reads, the peak table, the GPU report table."""

from __future__ import annotations

import pytest
import torch

from bench import peaks
from bench.fake_cifar import write_fake_cifar
from bench.gpu_measure import table
from trainer.config import DataConfig, DatasetSpec
from trainer.data.datasets import open_split


def test_fake_cifar_is_read_like_the_real_thing(tmp_path):
    folder = write_fake_cifar(tmp_path, train=50, test=7, seed=1)
    assert folder.name == "cifar-10-batches-py"
    spec = DatasetSpec(name="cifar10", path=str(tmp_path))
    data = DataConfig(datasets=[spec])
    train = open_split(spec, "ssl", None, data)
    test = open_split(spec, "eval_test", None, data)
    assert len(train) == 50 and len(test) == 7
    img, label = train[3]
    assert img.size == (32, 32) and 0 <= label < 10
    again = write_fake_cifar(tmp_path, train=50, test=7, seed=2)  # existing files stay
    assert open_split(spec, "ssl", None, data)[3][0].tobytes() == img.tobytes()
    assert again == folder


def test_gpu_peak_table_picks_the_specific_name_and_the_precision(monkeypatch):
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda _d=None: "NVIDIA H100 PCIe")
    assert peaks.peak_tflops(cuda, "bf16")[0] == 756.0
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda _d=None: "NVIDIA H200")
    assert peaks.peak_tflops(cuda, "bf16")[0] == pytest.approx(989.4)
    assert peaks.peak_tflops(cuda, "fp32")[0] == pytest.approx(494.7)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda _d=None: "Mystery GPU")
    value, why = peaks.peak_tflops(cuda, "bf16")
    assert value is None and "--peak-tflops" in why


def test_cpu_peak_is_an_estimate_that_scales_with_threads():
    value, why = peaks.cpu_peak_tflops()
    if value is None:
        pytest.skip(why)
    assert why.startswith("estimate") and value > 0
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = peaks.cpu_peak_tflops()[0]
        torch.set_num_threads(2)
        assert peaks.cpu_peak_tflops()[0] == pytest.approx(2 * one)
    finally:
        torch.set_num_threads(before)


def test_gpu_table_ratios_against_the_best_reference_and_shows_errors():
    rows = [
        {
            "run": "reference naive",
            "img_per_s": 1000.0,
            "ms_per_step": 128.0,
            "mfu": 0.05,
            "gflop_per_img": 35.0,
            "peak_mem_gib": 10.0,
        },
        {
            "run": "reference SDPA",
            "img_per_s": 2000.0,
            "ms_per_step": 64.0,
            "mfu": 0.07,
            "gflop_per_img": 35.0,
            "peak_mem_gib": 9.0,
        },
        {
            "run": "ours eager",
            "img_per_s": 6000.0,
            "ms_per_step": 21.3,
            "mfu": 0.25,
            "gflop_per_img": 34.0,
            "peak_mem_gib": 8.0,
            "notes": "bf16",
        },
        {"run": "ours compiled", "error": "timed out after 240 s"},
        {"run": "ours, real data pipeline", "error": "exit 2: bad |\n  data: x"},
    ]
    md = table(rows, "H200")
    lines = md.splitlines()
    assert lines[0] == "### H200"
    assert "| ours eager | 6,000 | 3.00 | 25.0% | 34.0 | 21.3 | 8.0 | bf16 |" in lines
    assert "| reference naive | 1,000 | 0.50 |" in md
    assert "| ours compiled | – | – | – | – | – | – | timed out after 240 s |" in lines
    assert lines[-1].endswith("| exit 2: bad / data: x |"), "one line per row"


def test_cpu_bf16_peak_counts_the_bf16_instructions(monkeypatch):
    """MFU of a bf16 CPU step is taken against the bf16 rate the CPU has, not the fp32 one."""
    for flags, ratio in (({"avx512f"}, 1.0), ({"avx512f", "avx512_bf16"}, 2.0)):
        monkeypatch.setattr(peaks, "_cpu_flags_and_mhz", lambda f=flags: (f, 2000.0))
        fp32 = peaks.cpu_peak_tflops("fp32")[0]
        value, why = peaks.cpu_peak_tflops("bf16")
        assert value == pytest.approx(ratio * fp32)
        assert ("bf16" in why) == (ratio == 2.0)
    monkeypatch.setattr(peaks, "_cpu_flags_and_mhz", lambda: ({"avx512f", "amx_bf16"}, 2000.0))
    assert "AMX" in peaks.cpu_peak_tflops("bf16")[1]
