"""Install the BlazePose models for `human_poses` (backend mediapipe) from the package index.

    python -m prism4m.labelers.fetch_pose_models [--dir DIR]

`make setup` runs this. It downloads mediapipe's wheel (`pip download --no-deps`) into a
temporary folder, takes out only the two .tflite files (pose_mediapipe.MODEL_FILES), checks
their sha256 against the pinned ones and moves them into DIR (default: pose_mediapipe.model_dir(),
i.e. $PRISM4M_POSE_MODELS or ~/.cache/prism4m/mediapipe-0.10.21/). The wheel is deleted;
mediapipe is never installed (it needs numpy<2). Files already there with the right checksum
are kept, so running it again costs nothing and needs no network.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from prism4m.labelers.pose_mediapipe import MEDIAPIPE_VERSION, MODEL_FILES, model_dir, model_sha256

# One fixed wheel, whatever the host: the .tflite files are the same in every platform's wheel,
# and mediapipe 0.10.21 has no wheel for Python ≥ 3.13 or some platforms.
WHEEL_TAGS = ["--only-binary=:all:", "--implementation", "cp", "--python-version", "3.11",
              "--platform", "manylinux_2_28_x86_64"]


class FetchError(RuntimeError):
    pass


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def installed(directory: Path) -> bool:
    """Both files present with the pinned checksums."""
    return all((directory / f).is_file() and model_sha256(directory / f) == sha for f, (_, sha) in MODEL_FILES.items())


def fetch(directory: Path | None = None, quiet: bool = False) -> Path:
    directory = Path(directory) if directory else model_dir()
    if installed(directory):
        if not quiet:
            print(f"pose models: already in {directory}")
        return directory
    with tempfile.TemporaryDirectory(prefix="prism4m-mediapipe-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
               *WHEEL_TAGS, "-d", tmp, f"mediapipe=={MEDIAPIPE_VERSION}"]
        res = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("mediapipe-*.whl"))
        if res.returncode != 0 or not wheels:
            tail = " ".join((res.stderr or res.stdout).strip().splitlines()[-2:])
            raise FetchError(f"`pip download mediapipe=={MEDIAPIPE_VERSION}` failed (is the package index "
                             f"reachable?): {tail[:300]}")
        directory.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheels[0]) as whl:
            for name, (member, sha) in MODEL_FILES.items():
                data = whl.read(member)
                if _sha256(data) != sha:
                    raise FetchError(f"{member} in {wheels[0].name} has sha256 {_sha256(data)}, expected {sha}")
                part = directory / f".{name}.part"
                part.write_bytes(data)
                os.replace(part, directory / name)  # atomic: a reader never sees half a model
    if not quiet:
        print(f"pose models: mediapipe {MEDIAPIPE_VERSION}'s {', '.join(MODEL_FILES)} → {directory}")
    return directory


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=None, help=f"target folder (default {model_dir()})")
    parser.add_argument("-q", "--quiet", action="store_true")
    args = parser.parse_args(argv)
    try:
        fetch(args.dir, args.quiet)
    except (FetchError, OSError, KeyError) as exc:
        print(f"error: pose models not installed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
