"""`make gpu-check` is run on a GPU only when one is lent: its code is checked here, on the CPU,
through its dry run (the same stages and figures at toy sizes), so that a GPU session's few
minutes are not spent finding a broken script."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_gpu_check_dry_run_measures_every_stage(tmp_path, ray_session):
    figures = _gpu_check().run(str(tmp_path), dry_run=True)
    assert figures["gpu_check_images"] == 8 and figures["gpu_check_sam"] == "tiny"
    for stage in ("depth", "dinov2", "sam_instance", "tokenize_rgb"):
        assert figures[f"gpu_{stage}_img_per_s"] > 0, stage
        assert figures[f"gpu_{stage}_wall_s"] > 0, stage
    # the label stages' actors are streamed: their compute spans are there to add up
    for stage in ("depth", "dinov2", "sam_instance"):
        assert 0 < figures[f"gpu_{stage}_model_time_fraction"] <= 1, stage


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_gpu_check_without_a_device_says_so(tmp_path):
    assert "no CUDA device" in _gpu_check().run(str(tmp_path))["gpu_check"]
