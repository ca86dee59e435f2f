"""Shared fixtures: one local Ray session per test run, one torch thread, and small real-photo corpora/roots."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from prism4m.pipeline.ray_env import set_loopback_env

set_loopback_env()  # before anything imports ray: keep every socket on 127.0.0.1
# Tiny models on 2 shared cores run ~10x slower with intra-op threads fighting each other.
os.environ.setdefault("OMP_NUM_THREADS", "1")

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle", "immunohistochemistry", "camera", "logo")


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray (2 CPUs, loopback) shared by every test that needs it."""
    from prism4m.pipeline.ray_env import ensure_ray

    ensure_ray(num_cpus=2)
    yield
    import ray

    ray.shutdown()


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a module (``pytestmark = pytest.mark.usefixtures(...)``):
    tiny models on 2 shared cores run ~10x slower with OpenMP hand-offs fighting each other."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def photo_corpus(tmp_path_factory) -> Path:
    from prism4m.demo import write_photo_corpus

    return write_photo_corpus(tmp_path_factory.mktemp("photos"), PHOTOS)


@pytest.fixture(scope="session")
def photo_root(tmp_path_factory, ray_session, photo_corpus) -> str:
    """An ingested root of the photos (2 shards of 4, short side 160, 3 crops) with canny_edge.

    Session-scoped and shared: treat it as read-only; use `fresh_photo_root` to modify one.
    """
    from prism4m.pipeline.ingest import ingest
    from prism4m.pipeline.label import label

    root = tmp_path_factory.mktemp("photo_root") / "ds"
    ingest(str(photo_corpus), str(root), shard_size=4, short_side=160, n_crops=3, show_progress=False)
    label(str(root), ["canny_edge"], show_progress=False)
    return str(root)


@pytest.fixture
def fresh_photo_root(photo_root, tmp_path) -> str:
    """A private copy of `photo_root` that a test may change."""
    dst = tmp_path / "ds"
    shutil.copytree(photo_root, dst)
    return str(dst)
