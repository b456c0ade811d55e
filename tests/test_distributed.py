"""Multi-process training: a real 2-process ``torchrun`` (gloo, CPU), and the sharding helpers."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from mimir_fast import distributed
from mimir_fast.data import ArrayDataset
from mimir_fast.train import _epoch_batches, step_seed

# Each rank records, at every step, the ids of the images it got and a digest of the weights it
# trains from; the images' labels are their ids, so the records show which rank saw what.
SCRIPT = textwrap.dedent('''
    import hashlib, json, os, sys
    import numpy as np, torch
    import mimir_fast
    from mimir_fast.data import ArrayDataset
    from mimir_fast.methods import register_method
    from mimir_fast.methods.mae import MAEPretraining

    out_dir, loader, max_steps, resume = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    rank = int(os.environ["RANK"])

    @register_method
    class RecordingMAE(MAEPretraining):
        name = "recording-mae"

        def training_step(self, model, batch):
            digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters()))
            with open(os.path.join(out_dir, f"rank{rank}.jsonl"), "a") as f:
                f.write(json.dumps({"ids": batch.labels.tolist(), "weights": digest.hexdigest()}) + "\\n")
            return super().training_step(model, batch)

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(40, 16, 16, 1), dtype=np.uint8)
    train_data = ArrayDataset(images, np.arange(40))
    test_data = ArrayDataset(images[:10], np.arange(10))
    tiny = {"embed_dim": 32, "depth": 2, "num_heads": 2, "decoder_embed_dim": 32, "decoder_depth": 1,
            "decoder_num_heads": 2, "img_size": 16}
    result = mimir_fast.train(
        method="recording-mae", model="vit_tiny_patch4_32", model_overrides=tiny, epochs=2, batch_size=4,
        blr=1e-3, warmup_epochs=0.5, loader=loader, out_dir=out_dir, progress=False, log_every=1,
        checkpoint_steps=2, max_steps=max_steps, resume=None if resume == "none" else resume,
        train_data=train_data, test_data=test_data)
    with open(os.path.join(out_dir, f"final{rank}.json"), "w") as f:
        json.dump({"steps": result.steps, "test": result.final_metrics,
                   "weights": hashlib.sha256(b"".join(p.detach().numpy().tobytes()
                                                      for p in result.model.parameters())).hexdigest()}, f)
''')


def torchrun(tmp_path: Path, out_dir: Path, loader: str, max_steps: int, resume: str = "none") -> None:
    script = tmp_path / "train_ddp.py"
    script.write_text(SCRIPT)
    out_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(script), str(out_dir), loader, str(max_steps), resume]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def records(out_dir: Path, rank: int) -> list[dict]:
    return [json.loads(line) for line in (out_dir / f"rank{rank}.jsonl").read_text().splitlines()]


def test_torchrun_two_processes_shard_sync_and_resume(tmp_path):
    # 40 images, 2 ranks, 4 per rank and step: 5 steps an epoch, 10 in all
    full = tmp_path / "full"
    torchrun(tmp_path, full, "native", 10)
    r0, r1 = records(full, 0), records(full, 1)
    assert len(r0) == len(r1) == 10
    for epoch in range(2):
        seen0 = [i for r in r0[5 * epoch:5 * epoch + 5] for i in r["ids"]]
        seen1 = [i for r in r1[5 * epoch:5 * epoch + 5] for i in r["ids"]]
        assert not set(seen0) & set(seen1), "ranks saw the same images"
        assert sorted(seen0 + seen1) == list(range(40)), "the shards do not cover the epoch"
    assert [r["weights"] for r in r0] == [r["weights"] for r in r1], "weights differ between ranks"
    weights = [r["weights"] for r in r0]  # they change at every step (the warmup's first lr is 0)
    assert weights[0] == weights[1] and len(set(weights[1:])) == 9
    final0, final1 = (json.loads((full / f"final{k}.json").read_text()) for k in (0, 1))
    assert final0 == final1  # same weights, and held-out metrics averaged over the ranks
    assert final0["steps"] == 10 and np.isfinite(final0["test"]["loss"])
    log = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    assert len([r for r in log if r["split"] == "train"]) == 10  # rank 0 alone writes the log
    assert (full / "model.safetensors").exists()

    # stopped after 6 steps (last checkpoint at step 6), then resumed: the same run
    part = tmp_path / "part"
    torchrun(tmp_path, part, "native", 6)
    torchrun(tmp_path, part, "native", 10, resume="auto")
    p0 = records(part, 0)
    assert len(p0) == 6 + 4
    assert p0 == r0  # same data, same weights at every step after the resume
    assert json.loads((part / "final0.json").read_text())["weights"] == final0["weights"]


@pytest.mark.parametrize("world_size", [2, 3])
def test_torch_path_shards_are_disjoint_equal_and_cover(world_size):
    images = np.zeros((23, 4, 4, 1), dtype=np.uint8)
    data = ArrayDataset(images, np.arange(23))
    shards = []
    for rank in range(world_size):
        ids = [int(i) for _, y in _epoch_batches(data, 2, seed=5, epoch=1, skip=0, num_workers=0,
                                                  rank=rank, world_size=world_size) for i in y]
        shards.append(ids)
    assert len({len(s) for s in shards}) == 1  # equal steps on every rank
    flat = [i for s in shards for i in s]
    assert len(flat) == len(set(flat))
    # evaluation shards: every held-out image exactly once
    held_out = [int(i) for rank in range(world_size)
                for _, y in _epoch_batches(data, 4, 0, 0, 0, 0, shuffle=False, drop_last=False,
                                           rank=rank, world_size=world_size) for i in y]
    assert sorted(held_out) == list(range(23))


def test_single_process_is_unchanged():
    ctx, device = distributed.setup(torch.device("cpu"))
    assert not ctx.enabled and ctx.is_main and device == torch.device("cpu")
    assert distributed.mean_over_ranks(ctx, {"a": 1.5}, 3) == {"a": 1.5}
    t = torch.randn(3, 2)
    assert distributed.gather_batch(ctx, t) is t
    assert step_seed(7, 11) == step_seed(7, 11, rank=0) != step_seed(7, 11, rank=1)


def test_bad_torchrun_environment_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE"):
        distributed.setup(torch.device("cpu"))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "5")
    with pytest.raises(ValueError, match="RANK=5"):
        distributed.setup(torch.device("cpu"))
