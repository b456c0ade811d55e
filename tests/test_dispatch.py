"""Dispatch by evidence: kernels="auto" runs a kernel only where the table verified it faster.

CUDA is faked (``torch.cuda.is_available``, ``get_device_capability``, ``triton_available``), so
these run on the CPU; a stand-in with a CUDA device and a dtype plays the op's input tensor.
"""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import pytest
import torch
from mimir_fast.kernels import dispatch
from mimir_fast.kernels.dispatch import (
    SHIPPED_TABLE,
    TABLE_ENV,
    TABLE_FORMAT,
    TRITON_OPS,
    describe_table,
    load_table,
    resolve_kernels,
    use_triton,
    verified_table,
)
from mimir_fast.models import MaskedViT, MaskedViTConfig

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
TINY = {"img_size": 16, "patch_size": 4, "in_chans": 3, "embed_dim": 32, "depth": 1}
TINY.update(num_heads=2, decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)


@pytest.fixture(autouse=True)
def _fresh(monkeypatch):
    monkeypatch.delenv("MIMIR_FAST_KERNELS", raising=False)
    monkeypatch.delenv(TABLE_ENV, raising=False)
    dispatch.clear_table_cache()
    yield
    dispatch.clear_table_cache()


@pytest.fixture
def fake_cuda(monkeypatch):
    """A machine with an sm_90 GPU and Triton, as far as the dispatch can tell."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(dispatch, "triton_available", lambda: True)


def _entry(op="attention", arch="sm_90", dtype="bfloat16", verified=True, speedup=1.5):
    return {
        "op": op,
        "arch": arch,
        "dtype": dtype,
        "verified": verified,
        "speedup": speedup,
        "device": "NVIDIA H200",
        "date": "2026-01-01",
        "versions": {"torch": "2.11.0", "triton": "3.6.0"},
    }


def _use_table(monkeypatch, tmp_path, entries, name="verified.json"):
    path = tmp_path / name
    path.write_text(json.dumps({"format": TABLE_FORMAT, "entries": entries}))
    monkeypatch.setenv(TABLE_ENV, str(path))
    return path


def _cuda_input(dtype):
    """What use_triton reads of an op's input: a CUDA device, a dtype."""
    return SimpleNamespace(device=torch.device("cuda", 0), dtype=dtype, is_cuda=True)


# --------------------------------------------------------------------------- the shipped table


def test_shipped_table_is_well_formed():
    table = load_table(SHIPPED_TABLE)
    for (op, arch, dtype), entry in table.items():
        assert op in TRITON_OPS, op
        assert re.fullmatch(r"sm_\d+", arch), arch
        assert dtype in {"float32", "bfloat16", "float16"}, dtype
        assert {"device", "date", "versions"} <= entry.keys(), entry


def test_auto_on_cuda_is_the_reference_wherever_the_shipped_table_does_not_verify(fake_cuda):
    table = verified_table()
    for op in TRITON_OPS:
        for dtype in DTYPES:
            entry = table.get((op, "sm_90", dispatch.dtype_name(dtype)))
            want = "triton" if entry and dispatch.entry_picks_triton(entry) else "torch"
            assert resolve_kernels("auto", (op,), "cuda", dtype) == want, (op, dtype)
            assert use_triton("auto", op, _cuda_input(dtype)) == (want == "triton")


def test_auto_on_cuda_with_an_empty_table_is_the_reference(fake_cuda, monkeypatch, tmp_path):
    _use_table(monkeypatch, tmp_path, [])
    for op in TRITON_OPS:
        assert resolve_kernels("auto", (op,), "cuda") == "torch"
        for dtype in DTYPES:
            assert resolve_kernels("auto", (op,), "cuda:0", dtype) == "torch"
            assert not use_triton("auto", op, _cuda_input(dtype))
    assert resolve_kernels("auto", TRITON_OPS) == "torch"  # device None: CUDA, as faked
    assert "no kernel verified" in describe_table()


# ---------------------------------------------------------------------- a table with evidence


def test_verified_and_faster_picks_triton_only_there(fake_cuda, monkeypatch, tmp_path):
    _use_table(monkeypatch, tmp_path, [_entry("attention", "sm_90", "bfloat16", True, 1.5)])
    assert resolve_kernels("auto", ("attention",), "cuda", torch.bfloat16) == "triton"
    assert use_triton("auto", "attention", _cuda_input(torch.bfloat16))
    # another dtype, another op, another architecture: no evidence, so the reference
    assert resolve_kernels("auto", ("attention",), "cuda", torch.float32) == "torch"
    assert not use_triton("auto", "attention", _cuda_input(torch.float32))
    assert resolve_kernels("auto", ("norm_pix_loss",), "cuda", torch.bfloat16) == "torch"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    dispatch.clear_table_cache()
    assert resolve_kernels("auto", ("attention",), "cuda", torch.bfloat16) == "torch"


@pytest.mark.parametrize(
    "verified,speedup", [(True, 0.8), (True, 1.0), (True, None), (False, 2.0)], ids=str
)
def test_slower_or_unverified_keeps_the_reference(
    fake_cuda, monkeypatch, tmp_path, verified, speedup
):
    _use_table(monkeypatch, tmp_path, [_entry("pgd_step", "sm_90", "float32", verified, speedup)])
    assert resolve_kernels("auto", ("pgd_step",), "cuda", torch.float32) == "torch"
    assert not use_triton("auto", "pgd_step", _cuda_input(torch.float32))
    assert " torch " in describe_table()


def test_off_cuda_auto_is_the_reference_whatever_the_table(monkeypatch, tmp_path):
    _use_table(monkeypatch, tmp_path, [_entry("pgd_step", "sm_90", "float32")])
    assert resolve_kernels("auto", ("pgd_step",), "cpu", torch.float32) == "torch"
    assert not use_triton("auto", "pgd_step", torch.zeros(2, 3))


def test_explicit_choices_ignore_the_table(fake_cuda, monkeypatch, tmp_path):
    _use_table(monkeypatch, tmp_path, [])
    assert resolve_kernels("triton", ("attention",), "cuda", torch.float32) == "triton"
    assert use_triton("triton", "attention", _cuda_input(torch.float32))
    assert not use_triton("torch", "attention", _cuda_input(torch.bfloat16))
    monkeypatch.setenv("MIMIR_FAST_KERNELS", "triton")  # replaces "auto": the kernels, forced
    assert use_triton("auto", "attention", _cuda_input(torch.float32))


def test_the_autocast_dtype_decides_for_the_patch_embedding(fake_cuda, monkeypatch, tmp_path):
    entry = _entry("masked_patch_embed", "sm_90", "bfloat16")
    _use_table(monkeypatch, tmp_path, [entry])
    images = _cuda_input(torch.float32)  # the images stay fp32; the matmul runs in bf16
    assert not use_triton("auto", "masked_patch_embed", images)
    monkeypatch.setattr(torch, "is_autocast_enabled", lambda device_type=None: True)
    monkeypatch.setattr(torch, "get_autocast_dtype", lambda device_type: torch.bfloat16)
    assert use_triton("auto", "masked_patch_embed", images)


def test_masked_vit_decides_per_call(fake_cuda, monkeypatch, tmp_path):
    _use_table(monkeypatch, tmp_path, [])
    model = MaskedViT(MaskedViTConfig(**TINY), kernels="auto")
    assert model.backend == "torch" and model.op_kernels == "torch"
    _use_table(monkeypatch, tmp_path, [_entry("attention")], name="attention-only.json")
    model = MaskedViT(MaskedViTConfig(**TINY), kernels="auto")
    # some kernel may run: each op call decides for itself ("auto"), per dtype
    assert model.backend == "triton" and model.op_kernels == "auto"
    assert all(b.attn.backend == "auto" for b in model.blocks)
    assert not model._fast(_cuda_input(torch.bfloat16))  # the patch embedding is not verified
    x = torch.rand(2, 3, 16, 16)
    loss, _, _ = model(x, mask_ratio=0.5)  # CPU tensors: the reference, whatever the table says
    assert torch.isfinite(loss)


# ---------------------------------------------------------------------- reading the table


def test_each_table_file_is_read_once(fake_cuda, monkeypatch, tmp_path):
    _use_table(monkeypatch, tmp_path, [_entry()])
    reads = []
    real = dispatch.load_table
    monkeypatch.setattr(dispatch, "load_table", lambda path: reads.append(path) or real(path))
    for _ in range(5):
        assert use_triton("auto", "attention", _cuda_input(torch.bfloat16))
    assert len(reads) == 1


@pytest.mark.parametrize(
    "content,match",
    [
        ("not json", "cannot read"),
        (json.dumps({"entries": []}), "not a kernel evidence table"),
        (json.dumps({"format": TABLE_FORMAT, "entries": {}}), "must be a list"),
        (json.dumps({"format": TABLE_FORMAT, "entries": [{"op": "attention"}]}), "'arch'"),
        (json.dumps({"format": TABLE_FORMAT, "entries": [_entry(verified="yes")]}), "verified"),
        (json.dumps({"format": TABLE_FORMAT, "entries": [_entry(speedup="fast")]}), "speedup"),
    ],
    ids=["json", "format", "entries", "arch", "verified", "speedup"],
)
def test_a_malformed_table_names_itself(fake_cuda, monkeypatch, tmp_path, content, match):
    path = tmp_path / "broken.json"
    path.write_text(content)
    monkeypatch.setenv(TABLE_ENV, str(path))
    with pytest.raises(ValueError, match=match):
        resolve_kernels("auto", ("attention",), "cuda", torch.bfloat16)
    with pytest.raises(ValueError, match="broken.json"):
        load_table(path)


def test_a_missing_table_file_is_an_error(fake_cuda, monkeypatch, tmp_path):
    monkeypatch.setenv(TABLE_ENV, str(tmp_path / "nowhere.json"))
    with pytest.raises(ValueError, match="nowhere.json"):
        resolve_kernels("auto", ("attention",), "cuda", torch.bfloat16)


def test_describe_table_lists_each_entry(monkeypatch, tmp_path):
    entries = [
        _entry("attention", speedup=1.25),
        _entry("gaussian_gram", "sm_80", "float32", True, 1.0),
    ]
    path = _use_table(monkeypatch, tmp_path, entries)
    text = describe_table()
    assert str(path) in text and "(2 entries)" in text
    rows = {line.split()[0]: line.split() for line in text.splitlines()[2:]}
    assert rows["attention"][1:6] == ["sm_90", "bfloat16", "yes", "1.25x", "triton"]
    assert rows["gaussian_gram"][1:6] == ["sm_80", "float32", "yes", "1.00x", "torch"]
