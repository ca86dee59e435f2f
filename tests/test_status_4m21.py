"""All of 4M-21 on one root: every built-in labeler run through `prism4m label` with a tiny
random-weight checkpoint of its real library class (tests/model_fixtures_*.py), then
`prism4m status` counts 4M-21's 19 in_domain keys as labelled, all but the CPU ones flagged as
random weights. The count itself is checked without models on a root that lacks folders."""

from __future__ import annotations

import re
import shutil

import pytest
import yaml

import model_fixtures_hf as hf
import model_fixtures_imagebind as ib
import model_fixtures_pose_caption as pc
import model_fixtures_sam_clip as sc
from cli_run import ok
from prism4m.contract.modalities import FOURM21_IN_DOMAIN, MODALITIES, modality
from prism4m.labelers.registry import BUILTIN_LABELERS
from test_labelers_t5_caption import build_tiny_t5

pytestmark = pytest.mark.usefixtures("one_torch_thread")

COUNT = re.compile(r"^4M-21 in-domain modalities: (\d+)/19 labelled(?: \((\d+) from RANDOM WEIGHTS\))?(.*)$", re.M)
# labelled without a model and from no model's output: real labels even on a smoke root
REAL = {"rgb@224", "tok_rgb@224", "tok_canny_edge@224", "color_palette"}


def test_the_19_keys_map_to_their_modality_s_folder():
    assert len(FOURM21_IN_DOMAIN) == 19
    for key, folder in FOURM21_IN_DOMAIN.items():
        assert folder in MODALITIES and (key == "rgb@224" or modality(key).label_folder == folder), key
    # every folder is one a built-in labeler writes, or ingest's rgb
    assert set(FOURM21_IN_DOMAIN.values()) - {"rgb"} <= set(BUILTIN_LABELERS)


def test_status_counts_what_the_photo_root_lacks(photo_root):
    m = COUNT.search(ok("status", photo_root))
    assert m and m.group(1) == "3" and m.group(2) is None  # rgb@224, tok_rgb@224, tok_canny_edge@224
    assert "imagebind (tok_imagebind@224, tok_imagebind_global)" in m.group(3)
    assert "canny_edge" not in m.group(3)


def test_status_says_why_a_present_folder_is_not_labelled(fresh_photo_root):
    # a changed config makes canny_edge stale: its folder is there, but no longer counts
    ok("label", fresh_photo_root, "-m", "canny_edge", "-c", "canny_edge.low=20", "-c", "canny_edge.high=80", "-q")
    m = COUNT.search(ok("status", fresh_photo_root))
    assert m and m.group(1) == "2"
    assert "canny_edge (tok_canny_edge@224; shards 2 stale)" in m.group(3)


def test_every_4m21_folder_labelled_through_the_cli_is_19_of_19(photo_root, tmp_path):
    base = tmp_path / "models"
    cpu = {"num_gpus": 0, "num_cpus": 0.5}
    configs = {
        "depth": {"checkpoint": hf.build_depth_anything(base / "depth"), **cpu},
        "normal": {"method": "from_depth", **cpu},
        "semseg_coco": {"checkpoint": hf.build_mask2former(base / "semseg"), **cpu},
        "det": {"checkpoint": hf.build_detr(base / "det"), **cpu},
        "dinov2": {"checkpoint": hf.build_dinov2(base / "dinov2"), "input_size": 56, **cpu},
        "clip": {"checkpoint": sc.build_clip_tiny(base / "clip"), **cpu},
        "imagebind": {"checkpoint": ib.build_imagebind_tiny(base / "imagebind"), "num_heads": ib.HEADS, **cpu},
        "sam_instance": {"checkpoint": sc.build_sam_tiny(base / "sam"), "points_per_side": 4,
                         "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, **cpu},
        "sam_edge": cpu,
        "human_poses": {"checkpoint": pc.build_vitpose(base / "vitpose"),
                        "detector_checkpoint": pc.build_rtdetr(base / "rtdetr"), "detector_threshold": 0.0, **cpu},
        "caption": {"checkpoint": pc.build_blip(base / "blip"), "max_new_tokens": 8, **cpu},
        "t5_caption": {"checkpoint": build_tiny_t5(base / "t5"), "max_tokens": 16, **cpu},
        "color_palette": cpu, "metadata": cpu,
    }
    root = str(tmp_path / "ds")
    shutil.copytree(photo_root, root)  # rgb + canny_edge
    cfg = tmp_path / "labels.yaml"
    cfg.write_text(yaml.safe_dump(configs))
    ok("label", root, "-m", ",".join(configs), "--config-file", cfg, "-w", "1", "-q")
    out = ok("status", root)
    m = COUNT.search(out)
    assert m, out
    assert m.group(1) == "19" and m.group(3) == "", m.group(0)
    assert int(m.group(2)) == 19 - len(REAL), m.group(0)
    rows = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    for folder in set(FOURM21_IN_DOMAIN.values()):
        flagged = "[RANDOM WEIGHTS]" in rows[folder]
        assert flagged is (folder not in {"rgb", "canny_edge", "color_palette"}), rows[folder]
