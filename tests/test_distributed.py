"""Multi-process training (DDP, FSDP) and evaluation: real 2-process ``torchrun`` launches (gloo,
CPU) compared with single-process runs, and the sharding helpers."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import mimir_fast
import numpy as np
import pytest
import torch
from mimir_fast import distributed
from mimir_fast._io import load_tensors
from mimir_fast.attacks import GaussianNoise
from mimir_fast.cli import main as cli_main
from mimir_fast.data import ArrayDataset, load_digits
from mimir_fast.evaluate import evaluate
from mimir_fast.models import MaskedViT, create_model
from mimir_fast.training import CHECKPOINT_NAME, TrainConfig, load_checkpoint, step_seed
from mimir_fast.training.batches import epoch_batches as _epoch_batches

TINY = {
    "embed_dim": 32,
    "depth": 2,
    "num_heads": 2,
    "decoder_embed_dim": 32,
    "decoder_depth": 1,
    "decoder_num_heads": 2,
    "img_size": 16,
}

# Each rank records, at every step, the ids of the images it got and a digest of the weights it
# trains from; the images' labels are their ids, so the records show which rank saw what.
SCRIPT = textwrap.dedent("""
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
            digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes()
                                             for p in model.parameters()))
            with open(os.path.join(out_dir, f"rank{rank}.jsonl"), "a") as f:
                f.write(json.dumps({"ids": batch.labels.tolist(),
                                    "weights": digest.hexdigest()}) + "\\n")
            return super().training_step(model, batch)

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(40, 16, 16, 1), dtype=np.uint8)
    train_data = ArrayDataset(images, np.arange(40))
    test_data = ArrayDataset(images[:10], np.arange(10))
    tiny = {"embed_dim": 32, "depth": 2, "num_heads": 2, "decoder_embed_dim": 32,
            "decoder_depth": 1, "decoder_num_heads": 2, "img_size": 16}
    result = mimir_fast.train(
        method="recording-mae", model="vit_tiny_patch4_32", model_overrides=tiny, epochs=2,
        batch_size=4, blr=1e-3, warmup_epochs=0.5, loader=loader, out_dir=out_dir,
        progress=False, log_every=1, checkpoint_steps=2, max_steps=max_steps,
        resume=None if resume == "none" else resume,
        train_data=train_data, test_data=test_data)
    with open(os.path.join(out_dir, f"final{rank}.json"), "w") as f:
        json.dump({"steps": result.steps, "test": result.final_metrics,
                   "weights": hashlib.sha256(
                       b"".join(p.detach().numpy().tobytes()
                                for p in result.model.parameters())).hexdigest()}, f)
""")


def torchrun(
    tmp_path: Path, out_dir: Path, loader: str, max_steps: int, resume: str = "none"
) -> None:
    script = tmp_path / "train_ddp.py"
    script.write_text(SCRIPT)
    out_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(script),
        str(out_dir),
        loader,
        str(max_steps),
        resume,
    ]
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
        seen0 = [i for r in r0[5 * epoch : 5 * epoch + 5] for i in r["ids"]]
        seen1 = [i for r in r1[5 * epoch : 5 * epoch + 5] for i in r["ids"]]
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
        ids = [
            int(i)
            for _, y in _epoch_batches(
                data, 2, seed=5, epoch=1, skip=0, num_workers=0, rank=rank, world_size=world_size
            )
            for i in y
        ]
        shards.append(ids)
    assert len({len(s) for s in shards}) == 1  # equal steps on every rank
    flat = [i for s in shards for i in s]
    assert len(flat) == len(set(flat))
    # evaluation shards: every held-out image exactly once
    held_out = [
        int(i)
        for rank in range(world_size)
        for _, y in _epoch_batches(
            data, 4, 0, 0, 0, 0, shuffle=False, drop_last=False, rank=rank, world_size=world_size
        )
        for i in y
    ]
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


# ---------------------------------------------------------------------- FSDP and sharded evaluation
# One 2-process launch runs everything (process start-up dominates on a small machine): MIMIR
# pretraining with DDP, with FSDP, with FSDP stopped at step 2 and resumed; then `mimir-fast
# evaluate` and `evaluate(...)` with a random defense, sharded over the two ranks. The tests
# below compare the outputs with single-process computations.
SHARDED_SCRIPT = textwrap.dedent('''
    import hashlib, json, os, sys
    import numpy as np, torch, torch.distributed as dist
    import mimir_fast
    from mimir_fast.attacks import GaussianNoise
    from mimir_fast.cli import main
    from mimir_fast.data import load_digits
    from mimir_fast.evaluate import evaluate
    from mimir_fast.methods import register_method
    from mimir_fast.methods.mimir import MIMIRPretraining
    from mimir_fast.models import MaskedViT

    out, classifier = sys.argv[1], sys.argv[2]
    dist.init_process_group("gloo")  # started here, so every run below shares it
    rank = dist.get_rank()

    @register_method
    class ShardRecordingMIMIR(MIMIRPretraining):
        """MIMIR that records, at each step, what a block's weight looks like inside the step."""
        name = "shard-recording-mimir"

        def training_step(self, model, batch):
            w = model.blocks[0].mlp.fc1.weight
            local = w.to_local() if hasattr(w, "to_local") else w
            with open(os.path.join(self.config.out_dir, f"shard{rank}.jsonl"), "a") as f:
                f.write(json.dumps({"type": type(w.data).__name__, "local": list(local.shape),
                                    "ids": batch.labels.tolist()}) + "\\n")
            return super().training_step(model, batch)

    def digest(model):
        return hashlib.sha256(b"".join(t.detach().cpu().numpy().tobytes()
                                       for t in model.state_dict().values())).hexdigest()

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(20, 16, 16, 1), dtype=np.uint8)
    train_data = mimir_fast.data.ArrayDataset(images, np.arange(20))
    test_data = mimir_fast.data.ArrayDataset(images[:6], np.arange(6))
    tiny = {"embed_dim": 32, "depth": 2, "num_heads": 2, "decoder_embed_dim": 32,
            "decoder_depth": 1, "decoder_num_heads": 2, "img_size": 16}
    # 20 images, 2 ranks, 4 per rank and step: 2 steps an epoch, 4 in all
    common = dict(method="shard-recording-mimir", model="vit_tiny_patch4_32",
                  model_overrides=tiny, epochs=2, batch_size=4, lr=3e-3, warmup_epochs=0.5,
                  clip_grad=0.5, log_every=1, progress=False,
                  train_data=train_data, test_data=test_data)
    for name, kw in [("ddp", {}), ("fsdp", {"distributed": "fsdp"}),
                     ("part", {"distributed": "fsdp", "max_steps": 2}),
                     ("part", {"distributed": "fsdp", "resume": "auto"})]:
        result = mimir_fast.train(out_dir=os.path.join(out, name), **common, **kw)
        with open(os.path.join(out, name, f"final{rank}.json"), "w") as f:
            json.dump({"steps": result.steps, "test": result.final_metrics,
                       "weights": digest(result.model),
                       "type": type(result.model).__name__}, f)

    kw = ["--data", "digits", "--max-images", "40", "--batch-size", "16",
          "--eps", "4/255,8/255", "--steps", "3",
          "--n-queries", "20", "--seed", "3", "--device", "cpu", "--no-progress"]
    assert main(["evaluate", classifier, "--attacks", "pgd,fgsm,square,mim", "--out",
                 os.path.join(out, "eval_cli"), *kw]) == 0
    test = load_digits("test")
    x = torch.stack([test[i][0] for i in range(40)])
    y = torch.tensor([test[i][1] for i in range(40)])
    model = MaskedViT.load(classifier).eval()
    report = evaluate(model, (x, y), attacks=[{"name": "pgd", "steps": 3}], eps=8 / 255,
                      defense=GaussianNoise(0.05), batch_size=16, seed=1, progress=False,
                      out_dir=os.path.join(out, "eval_api"))
    with open(os.path.join(out, f"eval_api{rank}.json"), "w") as f:
        json.dump(report, f)
    try:  # each rank given other images
        evaluate(model, (x[8 * rank:8 * rank + 8], y[8 * rank:8 * rank + 8]), eps=0.01,
                 progress=False)
        error = None
    except ValueError as e:
        error = str(e)
    with open(os.path.join(out, f"mismatch{rank}.txt"), "w") as f:
        f.write(repr(error))
    if rank == 0:  # one rank alone, inside the group: no collective may wait for the other
        alone = evaluate(model, (x[:16], y[:16]), attacks=[{"name": "fgsm"}], eps=0.02,
                         progress=False, sanity_checks=False, shard=False)
        with open(os.path.join(out, "alone.json"), "w") as f:
            json.dump(alone, f)
    dist.barrier()
''')


@pytest.fixture(scope="module")
def sharded_run(tmp_path_factory, digits_classifier):
    """Outputs of the 2-process launch: (folder, classifier file)."""
    root = tmp_path_factory.mktemp("sharded")
    classifier = root / "classifier.safetensors"
    digits_classifier[0].save(classifier)
    script = root / "sharded.py"
    script.write_text(SHARDED_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(script),
        str(root),
        str(classifier),
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return root, classifier


def train_losses(run: Path) -> list[float]:
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in log if r["split"] == "train"]


def test_fsdp_shards_and_matches_ddp(sharded_run):
    root, _ = sharded_run
    ddp, fsdp = root / "ddp", root / "fsdp"
    for rank in (0, 1):
        shard = [
            json.loads(line) for line in (fsdp / f"shard{rank}.jsonl").read_text().splitlines()
        ]
        whole = [json.loads(line) for line in (ddp / f"shard{rank}.jsonl").read_text().splitlines()]
        assert len(shard) == len(whole) == 4
        # a block's fc1 weight is (128, 32): DDP holds all of it, FSDP half on each rank
        assert {(r["type"], tuple(r["local"])) for r in whole} == {("Tensor", (128, 32))}
        assert {(r["type"], tuple(r["local"])) for r in shard} == {("DTensor", (64, 32))}
        assert [r["ids"] for r in shard] == [r["ids"] for r in whole]  # the same data
    assert train_losses(fsdp) == pytest.approx(train_losses(ddp), rel=1e-5, abs=1e-6)
    a = MaskedViT.load(ddp / "model.safetensors").state_dict()
    b = MaskedViT.load(fsdp / "model.safetensors").state_dict()
    torch.manual_seed(0)  # the run's initial weights
    start = create_model("vit_tiny_patch4_32", in_chans=1, num_classes=20, **TINY).state_dict()
    moved = max(float((a[k] - start[k]).abs().max()) for k in a)
    differ = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert moved > 5e-3 and differ < 1e-4, (moved, differ)
    # every rank returned the same whole model (FSDP: gathered into a plain MaskedViT)
    finals = [json.loads((fsdp / f"final{rank}.json").read_text()) for rank in (0, 1)]
    assert finals[0] == finals[1] and finals[0]["type"] == "MaskedViT" and finals[0]["steps"] == 4
    assert finals[0]["test"]["loss"] == pytest.approx(
        json.loads((ddp / "final0.json").read_text())["test"]["loss"], rel=1e-4
    )


def test_fsdp_checkpoint_is_whole_and_loads_in_one_process(sharded_run):
    root, _ = sharded_run
    ddp, fsdp = root / "ddp", root / "fsdp"
    path = fsdp / CHECKPOINT_NAME
    model = MaskedViT.load(path)  # a plain model, one process
    final = MaskedViT.load(fsdp / "model.safetensors").state_dict()
    assert all(torch.equal(v, final[k]) for k, v in model.state_dict().items())
    # the optimizer state is whole and in the plain layout: resumable by a single process too
    config = TrainConfig(
        method="shard-recording-mimir", model="vit_tiny_patch4_32", epochs=2, batch_size=4
    )
    fresh = create_model("vit_tiny_patch4_32", in_chans=1, num_classes=20, **TINY)
    optimizer = torch.optim.AdamW(fresh.param_groups(0.05, 1.0))
    assert load_checkpoint(path, fresh, optimizer, config) == 4
    names = {id(p): n for n, p in fresh.named_parameters()}
    ddp_tensors, _ = load_tensors(ddp / CHECKPOINT_NAME)
    fsdp_tensors, meta = load_tensors(path)
    assert meta["train_config"]["distributed"] == "fsdp"
    assert set(ddp_tensors) == set(fsdp_tensors)  # same keys: model.*, optim.<index>.<state>
    for p, state in optimizer.state.items():
        assert state["exp_avg"].shape == p.shape, names[id(p)]
    for key, want in ddp_tensors.items():
        # relative to the tensor: Adam turns the rounding noise of near-zero gradients (the key
        # biases' gradient is zero in exact arithmetic) into whole lr-sized steps
        error = float(
            (fsdp_tensors[key].float() - want.float()).norm() / want.float().norm().clamp_min(1e-12)
        )
        assert error < (2e-2 if key.startswith("model.") else 1e-3), (key, error)


def test_fsdp_resume_continues_the_run(sharded_run):
    root, _ = sharded_run
    fsdp, part = root / "fsdp", root / "part"
    assert train_losses(part) == train_losses(fsdp)  # steps 1-2, then 3-4 after the resume
    ours, theirs = (json.loads((run / "final0.json").read_text()) for run in (part, fsdp))
    assert ours == theirs  # same weights and held-out metrics
    steps = [json.loads(line)["ids"] for line in (part / "shard0.jsonl").read_text().splitlines()]
    assert len(steps) == 4  # two steps before the resume, two after


def without_timings(report: dict) -> dict:
    out = {k: v for k, v in report.items() if k != "seconds"}
    for key in ("results", "sanity", "more_steps", "reconstruction"):
        out[key] = [{k: v for k, v in row.items() if k != "seconds"} for row in report.get(key, [])]
    return out


def test_sharded_evaluate_cli_equals_one_process(sharded_run, tmp_path):
    root, classifier = sharded_run
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank of the launch
    try:
        assert (
            cli_main(
                [
                    "evaluate",
                    str(classifier),
                    "--attacks",
                    "pgd,fgsm,square,mim",
                    "--out",
                    str(tmp_path),
                    "--data",
                    "digits",
                    "--max-images",
                    "40",
                    "--batch-size",
                    "16",
                    "--eps",
                    "4/255,8/255",
                    "--steps",
                    "3",
                    "--n-queries",
                    "20",
                    "--seed",
                    "3",
                    "--device",
                    "cpu",
                    "--no-progress",
                ]
            )
            == 0
        )
    finally:
        torch.set_num_threads(threads)
    single = json.loads((tmp_path / "evaluation.json").read_text())
    sharded = json.loads((root / "eval_cli" / "evaluation.json").read_text())
    assert sharded["n_images"] == single["n_images"] == 40
    assert [r["robust_accuracy"] for r in sharded["results"]] == [
        r["robust_accuracy"] for r in single["results"]
    ]
    assert 0 < min(r["robust_accuracy"] for r in single["results"]) < single["clean_accuracy"]
    single, sharded = without_timings(single), without_timings(sharded)
    rec_single, rec_sharded = single.pop("reconstruction"), sharded.pop("reconstruction")
    assert sharded == single  # clean, robust and worst-case accuracies, sanity rows, warnings
    assert len(rec_sharded) == len(rec_single) == 2  # "mim" at both eps: PSNR, SSIM and losses
    for ours, theirs in zip(rec_sharded, rec_single):
        assert ours.keys() == theirs.keys() and ours["attack"] == theirs["attack"] == "mim"
        for key in (
            "eps",
            "psnr_input",
            "ssim_input",
            "psnr_recon",
            "ssim_recon",
            "loss_clean",
            "loss_adv",
        ):
            assert ours[key] == pytest.approx(theirs[key], rel=1e-6), key


def test_sharded_evaluate_api_equals_one_process(sharded_run, digits_classifier):
    root, classifier = sharded_run
    reports = [json.loads((root / f"eval_api{rank}.json").read_text()) for rank in (0, 1)]
    assert reports[0] == reports[1]  # every rank returns the same report, timings included
    assert (root / "eval_api" / "evaluation.json").exists()
    test = load_digits("test")
    x = torch.stack([test[i][0] for i in range(40)])
    y = torch.tensor([test[i][1] for i in range(40)])
    model = MaskedViT.load(classifier).eval()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = evaluate(
            model,
            (x, y),
            attacks=[{"name": "pgd", "steps": 3}],
            eps=8 / 255,
            defense=GaussianNoise(0.05),
            batch_size=16,
            seed=1,
            progress=False,
        )
        again = evaluate(
            model,
            (x, y),
            attacks=[{"name": "pgd", "steps": 3}],
            eps=8 / 255,
            defense=GaussianNoise(0.05),
            batch_size=16,
            seed=1,
            progress=False,
        )
    finally:
        torch.set_num_threads(threads)
    assert without_timings(json.loads(json.dumps(single))) == without_timings(reports[0])
    assert without_timings(single) == without_timings(
        again
    )  # the random defense's draws are seeded too
    for rank in (0, 1):
        message = (root / f"mismatch{rank}.txt").read_text()
        assert "different images or labels" in message, message
    alone = json.loads((root / "alone.json").read_text())
    reference = evaluate(
        model,
        (x[:16], y[:16]),
        attacks=[{"name": "fgsm"}],
        eps=0.02,
        progress=False,
        sanity_checks=False,
    )
    assert (
        alone["n_images"] == 16
        and alone["results"][0]["robust_accuracy"] == reference["results"][0]["robust_accuracy"]
    )


def test_distributed_choice_is_checked_and_a_cli_flag(capsys):
    with pytest.raises(ValueError, match="distributed must be one of"):
        TrainConfig(distributed="zero3")
    with pytest.raises(ValueError, match="distributed must be"):
        TrainConfig(distributed=2)
    assert cli_main(["pretrain", "--distributed", "fsdp", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["distributed"] == "fsdp"
    assert cli_main(["pretrain", "--distributed", "zero3", "--dry-run"]) == 2
    assert "distributed must be one of" in capsys.readouterr().err


def test_fsdp_in_one_process_is_plain_training(tmp_path):
    # without torchrun there is nothing to shard: the run equals the default one
    images = np.random.default_rng(1).integers(0, 256, size=(8, 16, 16, 1), dtype=np.uint8)
    data = ArrayDataset(images, np.arange(8) % 2)
    kw = {
        "method": "mae",
        "model": "vit_tiny_patch4_32",
        "model_overrides": TINY,
        "epochs": 1,
        "batch_size": 4,
        "progress": False,
        "train_data": data,
        "test_data": data,
    }
    plain = mimir_fast.train(out_dir=str(tmp_path / "a"), **kw)
    fsdp = mimir_fast.train(out_dir=str(tmp_path / "b"), distributed="fsdp", **kw)
    assert all(
        torch.equal(v, fsdp.model.state_dict()[k]) for k, v in plain.model.state_dict().items()
    )
