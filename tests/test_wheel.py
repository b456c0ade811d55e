"""The wheel installs and runs where there is no Rust: a fresh venv, no cargo on PATH, no network.

``maturin build --release`` makes the manylinux abi3 wheel (in CI it reuses the release build
that ``pip install -e .`` left in ``target/release``, so it takes seconds; from a stale build it
recompiles with fat LTO, minutes on 2 cores). ``MIMIR_FAST_WHEEL=<path>`` tests a wheel built
earlier instead. The wheel goes into a ``python -m venv --system-site-packages`` environment
(the installed torch stays visible) with ``pip install --no-deps --no-index``, and is imported
from a folder outside the repository, so the source tree cannot stand in for it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUST_TOOLS = ("cargo", "rustc", "rustup")

SMOKE = """
import os, sys
import numpy as np
import torch
import mimir_fast
from mimir_fast import Loader, MaskedViT, MaskedViTConfig, _native
from mimir_fast.kernels import dispatch

assert mimir_fast.__file__.startswith(sys.prefix), mimir_fast.__file__  # the wheel, not the tree
info = dict(_native.build_info())
images = np.random.default_rng(0).integers(0, 256, (10, 16, 16, 3), dtype=np.uint8)
loader = Loader(images, batch_size=4, num_masks=1, patch_size=4, shuffle=False)
batches = list(loader)
assert [b.images.shape[0] for b in batches] == [4, 4], [b.images.shape for b in batches]
config = MaskedViTConfig(img_size=16, patch_size=4, embed_dim=32, depth=1, num_heads=2,
                         decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)
model = MaskedViT(config, kernels="auto")
loss, pred, mask = model(batches[0].images, ids_keep=batches[0].masks[0][0])
assert torch.isfinite(loss) and pred.shape == (4, 16, 48), pred.shape
assert dispatch.SHIPPED_TABLE.is_file(), dispatch.SHIPPED_TABLE  # the evidence table ships
dispatch.verified_table()
print("smoke ok", mimir_fast.__version__, info["profile"])
"""


def _build_wheel(out: Path) -> Path:
    """The wheel to test: ``MIMIR_FAST_WHEEL``, else a fresh ``maturin build --release``."""
    given = os.environ.get("MIMIR_FAST_WHEEL")
    if given:
        return Path(given)
    maturin = shutil.which("maturin")
    assert maturin, "the wheel test needs maturin (pip install 'maturin>=1.9,<2')"
    cmd = [maturin, "build", "--release", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = out.glob("mimir_fast-*.whl")
    return wheel


def _without_rust(venv: Path) -> dict[str, str]:
    """The environment of the venv: its bin first, no folder holding a Rust tool, no PYTHONPATH."""
    keep = [
        d
        for d in os.environ.get("PATH", "").split(os.pathsep)
        if d and not any(shutil.which(tool, path=d) for tool in RUST_TOOLS)
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CARGO", "RUSTUP"))}
    env.pop("PYTHONPATH", None)
    env.update(PATH=os.pathsep.join([str(venv / "bin"), *keep]), VIRTUAL_ENV=str(venv))
    env.pop("TRITON_INTERPRET", None)
    return env


@pytest.mark.slow
@pytest.mark.timeout(1800)  # a stale release build recompiles with fat LTO
def test_wheel_installs_without_rust_and_runs(tmp_path):
    wheel = _build_wheel(tmp_path / "dist")
    assert "-abi3-" in wheel.name and "manylinux" in wheel.name, wheel.name
    names = set(zipfile.ZipFile(wheel).namelist())
    for member in ("mimir_fast/kernels/verified.json", "mimir_fast/py.typed"):
        assert member in names, member
    assert any(n.startswith("mimir_fast/_native") and n.endswith(".so") for n in names)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    env = _without_rust(venv)
    python = str(venv / "bin" / "python")
    for tool in RUST_TOOLS:
        assert shutil.which(tool, path=env["PATH"]) is None, tool
    check = "import shutil; assert all(shutil.which(t) is None for t in ('cargo', 'rustc'))"
    subprocess.run([python, "-c", check], env=env, check=True)

    install = [python, "-m", "pip", "install", "--no-deps", "--no-index", "--force-reinstall"]
    proc = subprocess.run(
        [*install, str(wheel)], env=env, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr

    outside = tmp_path / "elsewhere"  # not the repository: its python/ cannot be imported
    outside.mkdir()
    proc = subprocess.run(
        [python, "-c", textwrap.dedent(SMOKE)],
        cwd=outside,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0 and "smoke ok" in proc.stdout, proc.stdout + proc.stderr
    proc = subprocess.run(
        [str(venv / "bin" / "mimir-fast"), "info"],
        cwd=outside,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
