"""Resumable evaluation: finished batches are journaled, a rerun resumes, other arguments are
refused, and a SIGKILL in the middle of ``mimir-fast evaluate`` costs nothing."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mimir_fast._io import load_tensors
from mimir_fast.attacks import FGSM, GaussianNoise
from mimir_fast.cli import main as cli_main
from mimir_fast.evaluate import evaluate
from mimir_fast.evaluation.resume import JOURNAL_DIR, ResumeMismatch, load_samples

TIMING_KEYS = ("seconds",)


def without_timings(report: dict) -> dict:
    """The report (as written to JSON) without wall-clock times."""
    out = {k: v for k, v in json.loads(json.dumps(report)).items() if k not in TIMING_KEYS}
    for key in ("results", "sanity", "reconstruction", "more_steps"):
        out[key] = [{k: v for k, v in row.items() if k != "seconds"} for row in out.get(key, [])]
    return out


def batch_files(out_dir: Path) -> dict[str, Path]:
    return {p.name: p for p in (out_dir / JOURNAL_DIR).glob("s*-b*.safetensors")}


def assert_same_samples(a: Path, b: Path) -> None:
    """The per-image results of two report folders are equal, image by image."""
    ours, theirs = load_samples(a), load_samples(b)
    assert torch.equal(ours["clean_correct"], theirs["clean_correct"])
    assert ours["robust"].keys() == theirs["robust"].keys() and ours["robust"]
    for key, robust in ours["robust"].items():
        assert torch.equal(robust, theirs["robust"][key]), key


class CountingFGSM(FGSM):
    """FGSM that counts the batches it attacks."""

    calls = 0

    def perturb(self, x, y):
        type(self).calls += 1
        return super().perturb(x, y)


# ---------------------------------------------------------------------- the API
def test_rerun_reads_every_batch_back_and_rebuilds_the_report(digits_classifier, tmp_path):
    model, x, y = digits_classifier
    data = (x[:20], y[:20])
    attack = CountingFGSM(model, 0.05, seed=0)
    kw = {"attacks": [attack], "batch_size": 8, "progress": False, "sanity_checks": False}
    CountingFGSM.calls = 0
    first = evaluate(model, data, out_dir=tmp_path, **kw)
    assert CountingFGSM.calls == 3  # 20 images in batches of 8
    files = batch_files(tmp_path)
    assert len(files) == 6  # clean predictions and the attack, 3 batches each
    stamps = {name: p.stat().st_mtime_ns for name, p in files.items()}
    (tmp_path / "evaluation.json").unlink()
    again = evaluate(model, data, out_dir=tmp_path, **kw)
    assert CountingFGSM.calls == 3  # nothing attacked again
    assert {name: p.stat().st_mtime_ns for name, p in batch_files(tmp_path).items()} == stamps
    assert without_timings(again) == without_timings(first)
    saved = json.loads((tmp_path / "evaluation.json").read_text())
    assert without_timings(saved) == without_timings(first)
    samples = load_samples(tmp_path)
    clean = samples["clean_correct"]
    assert clean.float().mean().item() == pytest.approx(first["clean_accuracy"])
    (robust,) = samples["robust"].values()
    assert robust.float().mean().item() == pytest.approx(first["results"][0]["robust_accuracy"])
    assert not (robust & ~clean).any()


def test_partial_journal_resumes_to_the_same_results(digits_classifier, tmp_path):
    model, x, y = digits_classifier
    kw = {
        "attacks": [{"name": "pgd", "steps": 2}],
        "eps": (0.02, 0.05),
        "defense": GaussianNoise(0.05),  # random: its draws are seeded per batch
        "eot_samples": 2,
        "batch_size": 8,
        "progress": False,
        "seed": 3,
    }
    whole = evaluate(model, (x[:24], y[:24]), out_dir=tmp_path / "whole", **kw)
    part = tmp_path / "part"
    evaluate(model, (x[:24], y[:24]), out_dir=part, **kw)
    files = sorted(batch_files(part).values())
    for path in files[1::2]:  # as if the run died with half of its batches finished
        path.unlink()
    (part / "evaluation.json").unlink()
    resumed = evaluate(model, (x[:24], y[:24]), out_dir=part, **kw)
    assert without_timings(resumed) == without_timings(whole)
    assert_same_samples(part, tmp_path / "whole")
    assert sorted(batch_files(part)) == sorted(batch_files(tmp_path / "whole"))


def test_other_arguments_are_refused_naming_what_differs(digits_classifier, tmp_path):
    model, x, y = digits_classifier
    kw = {"attacks": [{"name": "fgsm"}], "eps": 0.03, "batch_size": 8, "progress": False}
    data = (x[:16], y[:16])
    evaluate(model, data, out_dir=tmp_path, sanity_checks=False, **kw)
    before = sorted(batch_files(tmp_path))
    other_weights = copy.deepcopy(model)
    with torch.no_grad():
        other_weights.head.bias.add_(0.01)
    cases = [
        ({"model": other_weights}, "model weights"),
        ({"data": (x[16:32], y[16:32])}, "data"),
        ({"seed": 1}, "seed"),
        ({"eps": 0.04}, "eps"),
        ({"batch_size": 4}, "batch_size"),
        ({"norm": "l2"}, "norm"),
        ({"sanity_checks": True}, "sanity checks"),
        ({"attacks": [{"name": "pgd", "steps": 2}]}, "attacks"),
        ({"defense": GaussianNoise(0.05)}, "defense"),
        ({"threat": "gray", "defense": GaussianNoise(0.05)}, "threat"),
    ]
    for change, field in cases:
        args = {"model": model, "data": data, "sanity_checks": False, **kw, **change}
        with pytest.raises(ValueError, match=field) as info:
            evaluate(args.pop("model"), args.pop("data"), out_dir=tmp_path, **args)
        assert isinstance(info.value, ResumeMismatch) and "resume=False" in str(info.value)
    assert sorted(batch_files(tmp_path)) == before  # nothing mixed in
    noisy = GaussianNoise(0.05)
    report = evaluate(model, data, out_dir=tmp_path, resume=False, defense=noisy, **kw)
    header = json.loads((tmp_path / JOURNAL_DIR / "run.json").read_text())
    assert header["defense"] is not None and report["defense"] is not None
    with pytest.raises(ValueError, match="defense"):  # the new run's journal is the one kept
        evaluate(model, data, out_dir=tmp_path, **kw)


# ---------------------------------------------------------------------- SIGKILL and rerun
def _wait_for_batches(out: Path, proc: subprocess.Popen, count: int, timeout: float) -> None:
    """Poll until ``count`` attack batches (salt >= 1) are on disk, the process ends, or
    ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        attacked = [n for n in batch_files(out) if not n.startswith("s00000-")]
        if len(attacked) >= count:
            return
        time.sleep(0.005)


def test_sigkill_then_the_same_command_equals_an_uninterrupted_run(digits_classifier, tmp_path):
    model = digits_classifier[0]
    classifier = tmp_path / "classifier.safetensors"
    model.save(classifier)
    argv = ["evaluate", str(classifier), "--data", "digits", "--max-images", "48"]
    argv += ["--batch-size", "4", "--eps", "4/255,8/255", "--attacks", "pgd,fgsm", "--steps", "5"]
    argv += ["--seed", "1", "--device", "cpu", "--no-progress"]
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "mimir_fast", *argv, "--out", str(killed)]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_for_batches(killed, proc, count=4, timeout=240)
        assert proc.poll() is None, "the run ended before it could be killed: " + (
            proc.stderr.read().decode()[-2000:] if proc.stderr else ""
        )
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "evaluation.json").exists()
    survived = {name: p.stat().st_mtime_ns for name, p in batch_files(killed).items()}
    for path in batch_files(killed).values():  # every batch on disk is whole
        load_tensors(path)
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the subprocesses (OMP_NUM_THREADS=1)
    try:
        assert cli_main([*argv, "--out", str(whole)]) == 0
    finally:
        torch.set_num_threads(threads)
    after = {name: p.stat().st_mtime_ns for name, p in batch_files(killed).items()}
    assert {name: after[name] for name in survived} == survived  # read back, not recomputed
    assert len(survived) < len(after) == len(batch_files(whole))
    report = json.loads((killed / "evaluation.json").read_text())
    reference = json.loads((whole / "evaluation.json").read_text())
    assert without_timings(report) == without_timings(reference)
    assert_same_samples(killed, whole)
    for name, path in batch_files(whole).items():  # every attack run's batches, checks included
        ours, theirs = load_tensors(batch_files(killed)[name])[0], load_tensors(path)[0]
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), name
