"""How an actor group starts and runs in `run_units`, on the test session's local Ray.

- A streamed worker (prepare/compute/finish, pipeline_depth > 1) takes units as soon as it
  is placed and reads them while its models load: ready() runs once per process, whoever
  asks first, and a unit's compute waits for it.
- A streamed worker whose ready() fails aborts the run with the worker's message, and no
  unit is recorded as failed (it was a start-up error, not the unit's).
- Ray workers of a local Ray keep image-sized temporaries on the heap: an actor's later calls
  do not page-fault on every large numpy array (ray_env.set_worker_malloc_env).
"""

from __future__ import annotations

import pytest

from prism4m.pipeline.execute import WorkerStartupError, run_units

pytestmark = pytest.mark.timeout(120)


def slow_model_class() -> type:
    """Made in a function: Ray ships it by value (a test module is not importable in workers)."""

    class SlowModel:
        """Records, in a folder, when each step ran; its model takes 1.5 s to load."""

        def __init__(self, folder: str, fail: bool = False):
            self.folder, self.fail = folder, fail

        def _mark(self, what: str) -> None:
            import os
            import time
            from pathlib import Path

            Path(self.folder, f"{time.time():.6f}-{os.getpid()}-{what}").touch()

        def ready(self) -> bool:
            import time

            self._mark("ready-start")
            time.sleep(1.5)
            if self.fail:
                raise FileNotFoundError("model.safetensors: no such weights file")
            self._mark("ready-end")
            return True

        def prepare(self, unit: int) -> dict:
            self._mark(f"prepare-{unit}")
            return {"unit": unit}

        def compute(self, state: dict) -> dict:
            self._mark(f"compute-{state['unit']}")
            return state

        def finish(self, state: dict) -> dict:
            return {"samples": 1, "unit": state["unit"]}

    return SlowModel


def _marks(folder) -> list[tuple[float, int, str]]:
    out = []
    for p in folder.iterdir():
        t, pid, what = p.name.split("-", 2)
        out.append((float(t), int(pid), what))
    return sorted(out)


def test_streamed_actor_reads_units_while_its_model_loads(tmp_path, ray_session):
    report = run_units([0, 1, 2, 3], slow_model_class(), (str(tmp_path),), workers=1, pipeline_depth=3, max_retries=0)
    assert report.ok and sorted(r["unit"] for r in report.results) == [0, 1, 2, 3]
    marks = _marks(tmp_path)
    ready_end = next(t for t, _, w in marks if w == "ready-end")
    assert [w for _, _, w in marks].count("ready-start") == 1  # once per process, though 4 calls wanted it
    assert any(w.startswith("prepare-") and t < ready_end for t, _, w in marks)  # read during the load
    assert all(t >= ready_end for t, _, w in marks if w.startswith("compute-"))  # the model waited for


def test_streamed_actor_whose_start_fails_aborts_without_failing_units(tmp_path, ray_session):
    failed = []
    with pytest.raises(WorkerStartupError, match="no such weights file"):
        run_units([0, 1, 2], slow_model_class(), (str(tmp_path), True), workers=1, pipeline_depth=3, max_retries=2,
                  on_failure=lambda unit, reason, message: failed.append(unit))
    assert failed == []
    assert not any(w.startswith("compute-") for _, _, w in _marks(tmp_path))


def test_aborted_run_prints_its_one_line_error_and_nothing_from_ray(tmp_path, ray_session, capfd, caplog):
    """Calls already sent when a run aborts (each streamed unit, each other actor's ready())
    are collected: Ray would log every unfetched error with its traceback ("Unhandled error")
    and warn of retries for calls on the actors it kills, burying the run's one-line error."""
    import gc
    import logging
    import time

    caplog.set_level(logging.WARNING)
    with pytest.raises(WorkerStartupError):
        run_units([0, 1, 2, 3], slow_model_class(), (str(tmp_path), True), workers=2, pipeline_depth=3,
                  max_retries=2)
    gc.collect()  # the abandoned references die here at the latest; Ray logs from a thread
    time.sleep(1.0)
    out = caplog.text + capfd.readouterr().err  # Ray's logger, and what its core worker prints
    assert "Unhandled error" not in out and "retries remaining" not in out, out[-2000:]


def allocator_class() -> type:
    class Allocator:
        """A colourfulness-like statistic: float64 copies of an image and of its channel
        differences, made and dropped, as the metadata labeler does per image."""

        def __init__(self):
            import numpy as np

            self.img = np.random.default_rng(0).integers(0, 255, (512, 683, 3), dtype=np.uint8)

        def ready(self) -> bool:
            return True

        def process(self, unit: int) -> dict:
            import resource

            import numpy as np

            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            for _ in range(20):
                f = self.img.astype(np.float64)
                rg, yb = f[..., 0] - f[..., 1], 0.5 * (f[..., 0] + f[..., 1]) - f[..., 2]
                float(rg.std() + yb.std())
            return {"samples": 1, "unit": unit,
                    "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}

    return Allocator


def test_actor_calls_keep_large_arrays_on_the_heap(ray_session):
    report = run_units([0, 1, 2], allocator_class(), (), workers=1, max_retries=0)
    assert report.ok
    later = [r["faults"] for r in sorted(report.results, key=lambda r: r["unit"])][1:]
    # glibc's own threshold gave ~3,700 faults per call here from the second call on (fresh
    # mmaps of the 2.8-8 MB temporaries); on the heap, none once the first call has grown it.
    assert max(later) < 500, later
