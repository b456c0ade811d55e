"""Compile every Triton kernel launch of the package for real GPUs, on a machine without one.

    python tests/aot_helpers.py --out builds.json [--arch 80 89 90] [--jobs 2]

Each case runs a real host launcher (``attention_forward``, ``pgd_step_triton``, ...) on meta
tensors (shapes and dtypes, no memory) with Triton's kernel launch replaced by a recorder and
the device's compute capability replaced by the target's. The recorded launches are therefore
exactly what the launcher would run on that GPU: its own configuration function picked the
constexprs, num_warps and num_stages. Each distinct launch is specialised by Triton's own binder
(pointer alignment, integer divisibility, as at run time), compiled by ``triton.compile`` for
the target down to a cubin with the bundled ``ptxas``, and measured: registers and spill bytes
from ``ptxas -v``, shared memory from the kernel's metadata. Triton caches the builds in its
cache directory (``TRITON_CACHE_DIR``, default ``~/.triton/cache``); the ptxas figures are kept
beside them, so a second run compiles nothing.

It needs Triton's compiler, not a GPU, and TRITON_INTERPRET must be unset (under the interpreter
``@triton.jit`` makes interpreted functions, which do not compile): tests/test_aot_compile.py
runs it in a subprocess.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import torch

ARCHS = (80, 89, 90)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MASK_RATIO = 0.75  # MAE's and MIMIR's
BATCH = 8  # samples per case; only grids depend on it
# The model of the interpreter tests (tests/test_vit_kernels.py, TINY).
TEST_MODEL = dict(
    img_size=12, patch_size=4, in_chans=3, embed_dim=32, num_heads=2,
    decoder_embed_dim=24, decoder_num_heads=3,
)  # fmt: skip
KERNEL_MODULES = (
    "attention", "masked_patch_embed", "decoder_scatter", "norm_pix_loss", "gaussian_gram",
    "pgd_step",
)  # fmt: skip


@dataclass(frozen=True)
class Case:
    """One call of the launchers: op, a readable shape label, the dtype name, and the call."""

    op: str
    shape: str
    dtype: str
    run: Callable[[], None]


def _meta(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, device="meta")


# ----------------------------------------------------------------------------------- cases


def _model_shapes() -> list[tuple[str, dict]]:
    """(label, geometry) of every preset and of the interpreter tests' model."""
    from mimir_fast.models.presets import MAE_DECODER, PRESETS

    out = []
    for name, c in sorted(PRESETS.items()):
        geo = dict(
            img=c.img_size, p=c.patch_size, c=c.in_chans, d=c.embed_dim, h=c.num_heads,
            dd=c.decoder_embed_dim, dh=c.decoder_num_heads,
        )  # fmt: skip
        out.append((name, geo))
    base = PRESETS["vit_base_patch16_224"]
    mae = dict(img=224, p=16, c=3, d=base.embed_dim, h=base.num_heads)
    out.append(
        (
            "vit_base_patch16_224+mae_decoder",
            dict(mae, dd=MAE_DECODER["decoder_embed_dim"], dh=MAE_DECODER["decoder_num_heads"]),
        )
    )
    t = TEST_MODEL
    out.append(("interpreter_test_model", dict(
        img=t["img_size"], p=t["patch_size"], c=t["in_chans"], d=t["embed_dim"],
        h=t["num_heads"], dd=t["decoder_embed_dim"], dh=t["decoder_num_heads"],
    )))  # fmt: skip
    return out


def _attention_case(label: str, n: int, t: int, h: int, dh: int, dtype: str) -> Case:
    def run() -> None:
        from mimir_fast.kernels.attention import attention_backward, attention_forward

        qkv = _meta(n, t, 3, h, dh, dtype=DTYPES[dtype])
        out, lse = attention_forward(qkv)
        attention_backward(torch.empty_like(out), qkv, out, lse)

    return Case("attention", f"{label} T={t} H={h} Dh={dh}", dtype, run)


def _attention_cases(models: list[tuple[str, dict]]) -> list[Case]:
    cases = []
    for label, g in models:
        length = (g["img"] // g["p"]) ** 2
        kept = int(length * (1 - MASK_RATIO))
        for t in sorted({1 + kept, 1 + length}):  # training (kept tokens) and evaluation (all)
            cases += [
                _attention_case(label, BATCH, t, g["h"], g["d"] // g["h"], dt) for dt in DTYPES
            ]
        # the decoder's head dim 8 runs SDPA under every kernels= choice; attention_triton takes it
        cases += [
            _attention_case(label + " decoder", BATCH, 1 + length, g["dh"], g["dd"] // g["dh"], dt)
            for dt in DTYPES
        ]
    # tests/test_vit_kernels.py: the interpreter cases and the GPU case of head dim 128
    for n, t, h, dh in [(3, 7, 2, 16), (3, 13, 3, 24), (2, 11, 1, 32), (3, 9, 4, 8),
                        (1, 150, 1, 16), (64, 300, 8, 128)]:  # fmt: skip
        cases += [_attention_case("test", n, t, h, dh, dt) for dt in DTYPES]
    return cases


def _embed_case(label: str, g: dict, dtype: str) -> Case:
    """Masked patch embedding, forward and backward; 16-bit: autocast (weight cast, fp32 rest)."""

    def run() -> None:
        from mimir_fast.kernels.masked_patch_embed import (
            masked_patch_embed_backward,
            masked_patch_embed_forward,
        )

        length = (g["img"] // g["p"]) ** 2
        k = int(length * (1 - MASK_RATIO))
        x = _meta(BATCH, g["c"], g["img"], g["img"])
        ids = _meta(BATCH, k, dtype=torch.int64)
        w = _meta(g["d"], g["c"], g["p"], g["p"], dtype=DTYPES[dtype])
        out, patches = masked_patch_embed_forward(x, ids, w, _meta(g["d"]), _meta(length, g["d"]))
        masked_patch_embed_backward(
            torch.empty_like(out), x, ids, w, patches, True, True, True, True, length
        )

    return Case("masked_patch_embed", label, dtype, run)


def _scatter_case(label: str, g: dict, dtype: str) -> Case:
    """Decoder scatter; 16-bit: the decoder embedding's output under autocast, fp32 parameters."""

    def run() -> None:
        from mimir_fast.kernels.decoder_scatter import (
            decoder_scatter_backward,
            decoder_scatter_forward,
        )

        length = (g["img"] // g["p"]) ** 2
        k = int(length * (1 - MASK_RATIO))
        x = _meta(BATCH, 1 + k, g["dd"], dtype=DTYPES[dtype])
        ids = _meta(BATCH, length, dtype=torch.int64)
        out = decoder_scatter_forward(x, ids, _meta(g["dd"]), _meta(1 + length, g["dd"]))
        decoder_scatter_backward(torch.empty_like(out), ids, k, x.dtype, True)

    return Case("decoder_scatter", label, dtype, run)


def _loss_case(label: str, g: dict, dtype: str) -> Case:
    """Norm-pix loss on the decoder's prediction slice (not contiguous), every kernel switch."""

    def run() -> None:
        from mimir_fast.kernels.norm_pix_loss import norm_pix_loss_backward, norm_pix_loss_forward

        length, pdim = (g["img"] // g["p"]) ** 2, g["p"] ** 2 * g["c"]
        image = _meta(BATCH, g["c"], g["img"], g["img"])
        pred = _meta(BATCH, 1 + length, pdim, dtype=DTYPES[dtype])[:, 1:, :]
        for mask in (_meta(BATCH, length), None):
            for norm_pix in (True, False):
                loss = norm_pix_loss_forward(image, pred, mask, g["p"], norm_pix)
                for need_image in (True, False):
                    norm_pix_loss_backward(loss, image, pred, mask, g["p"], norm_pix, need_image)

    return Case("norm_pix_loss", label, dtype, run)


def _gram_case(shape: tuple[int, ...], dtype: str, ieee: bool = False) -> Case:
    """Gram matrix of (m, d) or (B, m, d) samples; ``ieee``: exact products (tests only)."""

    def run() -> None:
        from mimir_fast.kernels.gaussian_gram import gaussian_gram_forward

        a = _meta(*shape, dtype=DTYPES[dtype])
        a3 = a if a.ndim == 3 else a.unsqueeze(0)
        gaussian_gram_forward(a3, _meta(a3.shape[0]), ieee)

    label = "x".join(map(str, shape)) + (" ieee" if ieee else "")
    return Case("gaussian_gram", label, dtype, run)


def _pgd_case(shape: tuple[int, ...], dtype: str) -> Case:
    def run() -> None:
        from mimir_fast.kernels.pgd_step import pgd_step_triton

        x = _meta(*shape, dtype=DTYPES[dtype])
        for norm in ("linf", "l2"):
            pgd_step_triton(x, torch.empty_like(x), torch.empty_like(x), 0.01, 0.03, norm)

    return Case("pgd_step", "x".join(map(str, shape)), dtype, run)


def all_cases() -> list[Case]:
    """Every launch the dispatch can reach at the presets' shapes, and the tests' shapes."""
    models = _model_shapes()
    cases = _attention_cases(models)
    for label, g in models:
        for dt in DTYPES:
            cases += [
                _embed_case(label, g, dt),
                _scatter_case(label, g, dt),
                _loss_case(label, g, dt),
            ]
    # HSIC: (batch, features) of inputs and latents; the interpreter tests' shapes
    gram_shapes = [(512, 3 * 32 * 32), (256, 65 * 384), (128, 3 * 224 * 224), (7, 13), (3, 33, 70),
                   (2, 17, 129), (1, 5), (9, 40)]  # fmt: skip
    cases += [_gram_case(s, dt) for s in gram_shapes for dt in ("fp32", "bf16")]
    cases += [_gram_case(s, "fp32", ieee=True) for s in gram_shapes[:3]]  # the GPU tests' path
    pgd_shapes = [(BATCH, 3, 32, 32), (BATCH, 3, 224, 224), (3, 2, 5, 7)]
    return cases + [_pgd_case(s, dt) for s in pgd_shapes for dt in DTYPES]


# ------------------------------------------------------------------------- record, compile


@contextlib.contextmanager
def recording(arch: int) -> Iterator[list[tuple]]:
    """Within: kernel launches are recorded as (kernel, args, kwargs), not run, and every launcher
    sees compute capability ``arch``."""
    import importlib

    from triton.runtime.jit import JITFunction

    launches: list[tuple] = []

    def record(kernel, *args, grid, warmup, **kwargs):
        launches.append((kernel, args, kwargs))

    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(JITFunction, "run", record))
        # autocast has no meta device; the launchers only switch it off around their matmuls
        stack.enter_context(mock.patch("torch.autocast", lambda *a, **k: contextlib.nullcontext()))
        for name in KERNEL_MODULES:
            module = importlib.import_module(f"mimir_fast.kernels.{name}")
            if hasattr(module, "device_arch"):
                stack.enter_context(mock.patch.object(module, "device_arch", lambda _t: arch))
        yield launches


def _specialize(kernel, args: tuple, kwargs: dict, arch: int):
    """(target, ASTSource, options) of one launch, as ``JITFunction.run`` would build them."""
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.compiler.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    kwargs = dict(kwargs)
    kwargs["debug"] = kwargs.get("debug", kernel.debug) or knobs.runtime.debug
    kwargs["instrumentation_mode"] = knobs.compilation.instrumentation_mode
    if hasattr(knobs.compilation, "fpsan_homomorphic_casts"):  # Triton >= 3.7
        kwargs["fpsan_homomorphic_casts"] = knobs.compilation.fpsan_homomorphic_casts
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, opts = binder(*args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(
        backend, kwargs, bound, specialization, opts
    )
    return target, ASTSource(kernel, signature, constexprs, attrs), options


_REGS = re.compile(r"Used (\d+) registers")
_SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def _ptxas_report(compiled, arch: int) -> str:
    """``ptxas -v`` on the build's PTX (for a build Triton took from its cache)."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    with tempfile.TemporaryDirectory() as tmp:
        ptx = Path(tmp) / "kernel.ptx"
        ptx.write_text(compiled.asm["ptx"])
        gpu = f"--gpu-name={sm_arch_from_capability(arch)}"
        cmd = [get_ptxas(arch).path, "-v", "--regAllocOptLevel=2", gpu, str(ptx), "-o", f"{ptx}.o"]
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stderr


def _resources(compiled, log: str, arch: int) -> dict[str, int]:
    """Registers and spill bytes per thread, from ptxas; kept beside Triton's cache."""
    from triton import knobs

    store = Path(knobs.cache.dir) / "mimir_fast_aot" / f"{compiled.hash}.json"
    if not _REGS.search(log):
        if store.exists():
            return json.loads(store.read_text())
        log = _ptxas_report(compiled, arch)
    stores, loads = _SPILLS.search(log).groups()
    found = {"regs": int(_REGS.search(log).group(1)), "spill_stores": int(stores),
             "spill_loads": int(loads)}  # fmt: skip
    store.parent.mkdir(parents=True, exist_ok=True)
    store.write_text(json.dumps(found))
    return found


def compile_launch(kernel, args: tuple, kwargs: dict, arch: int) -> dict:
    """Compile one recorded launch for ``arch``; its resources, or the compiler's error."""
    import triton
    from triton import knobs

    knobs.nvidia.dump_ptxas_log = True  # printed: captured below
    start = time.perf_counter()
    log = io.StringIO()
    try:
        target, src, options = _specialize(kernel, args, kwargs, arch)
        with contextlib.redirect_stdout(log):
            compiled = triton.compile(src, target=target, options=options.__dict__)
        found = _resources(compiled, log.getvalue(), arch)
    except Exception as exc:  # reported per build; the test fails on any
        return {"error": f"{type(exc).__name__}: {str(exc)[-2000:]}"}
    return {
        **found,
        "shared": compiled.metadata.shared,
        "num_warps": compiled.metadata.num_warps,
        "num_stages": compiled.metadata.num_stages,
        "seconds": round(time.perf_counter() - start, 2),
    }


def _config_text(kwargs: dict) -> str:
    cfg = " ".join(f"{k}={v}" for k, v in kwargs.items() if k not in ("num_warps", "num_stages"))
    return f"{cfg} w{kwargs.get('num_warps', 4)} s{kwargs.get('num_stages', 3)}"


def plan(archs: tuple[int, ...]) -> list[dict]:
    """The distinct builds of every case, each with the cases that reach it.

    A build is a kernel, its tensors' dtypes, its constexprs, warps and stages, and an arch.
    Launches that differ only in Triton's integer specialisation (a size divisible by 16 or not)
    share tiles and shared memory: the first one stands for the others.
    """
    builds: dict[tuple, dict] = {}
    for case in all_cases():
        for arch in archs:
            with recording(arch) as launches:
                case.run()
            for kernel, args, kwargs in launches:
                dtypes = tuple(str(a.dtype) for a in args if isinstance(a, torch.Tensor))
                key = (kernel.__name__, dtypes, _config_text(kwargs), arch)
                build = builds.setdefault(key, {
                    "op": case.op, "kernel": kernel.__name__, "arch": arch, "dtypes": [],
                    "shapes": [], "config": _config_text(kwargs), "launch": (kernel, args, kwargs),
                })  # fmt: skip
                for field, value in (("dtypes", case.dtype), ("shapes", case.shape)):
                    if value not in build[field]:
                        build[field].append(value)
    return list(builds.values())


_PLAN: list[dict] = []  # the builds, read by forked workers by index


def _compile_index(i: int) -> dict:
    kernel, args, kwargs = _PLAN[i]["launch"]
    return compile_launch(kernel, args, kwargs, _PLAN[i]["arch"])


def run(archs: tuple[int, ...], jobs: int) -> dict:
    """Plan and compile every build; the JSON-ready report."""
    import multiprocessing

    import triton

    start = time.perf_counter()
    _PLAN[:] = plan(archs)
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork")) as pool:
        results = list(pool.map(_compile_index, range(len(_PLAN))))
    builds = [{k: v for k, v in b.items() if k != "launch"} | r for b, r in zip(_PLAN, results)]
    return {
        "triton": triton.__version__,
        "archs": list(archs),
        "seconds": round(time.perf_counter() - start, 1),
        "builds": builds,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="the JSON report to write")
    parser.add_argument("--arch", type=int, nargs="+", default=list(ARCHS))
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        sys.exit("unset TRITON_INTERPRET: the interpreter's kernels do not compile")
    report = run(tuple(args.arch), args.jobs)
    Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
