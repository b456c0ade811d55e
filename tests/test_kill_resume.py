"""Kill-and-resume: a training run killed with SIGKILL at random points (once right inside a
checkpoint write) and restarted with ``resume="auto"`` ends with the same weights, bit for bit,
as an uninterrupted run.

Every run is its own process (forked from a parent that has imported torch and mimir_fast
once): a short MAE pretraining of a tiny MaskedViT on the digits that checkpoints after every
step. The uninterrupted run goes on beside the killed ones.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mimir_fast._io import load_tensors

MAX_STEPS = 24  # of 2 epochs x 44 steps: the schedule spans both epochs, the run stops early
KILLS = 3
WAIT_S = 60  # per phase of one child

# A parent that imports torch, the digits reader and mimir_fast once, then forks one training
# process per "run OUT_DIR" line (a child starts in milliseconds instead of seconds) and reaps
# one per "wait PID" line, answering with its exit status (-9 for SIGKILL).
ZYGOTE = r"""
import os, sys, traceback
import sklearn.datasets, torch, torch._dynamo  # what a run imports; nothing runs yet (fork-safe)
import mimir_fast

for line in sys.stdin:
    cmd, arg = line.split()
    if cmd == "wait":
        print(os.waitstatus_to_exitcode(os.waitpid(int(arg), 0)[1]), flush=True)
        continue
    pid = os.fork()
    if pid:
        print(pid, flush=True)
        continue
    log = os.open(arg + ".log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(log, 1)
    os.dup2(log, 2)
    try:
        mimir_fast.train(
            method="mae", model="vit_tiny_patch4_32", data="digits", epochs=2, batch_size=32,
            max_steps={max_steps},
            model_overrides={"img_size": 16, "embed_dim": 32, "depth": 2, "num_heads": 2,
                             "decoder_embed_dim": 32, "decoder_depth": 1, "decoder_num_heads": 2},
            checkpoint_steps=1, log_every=1, eval_every=1, resume="auto", out_dir=arg,
            progress=False, num_workers=1, seed=3)
        code = 0
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
""".replace("{max_steps}", str(MAX_STEPS))

CHECKPOINT = "checkpoint-last.safetensors"


class Zygote:
    def __init__(self) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", ZYGOTE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
            bufsize=1,
        )

    def _ask(self, line: str) -> int:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        if not answer:
            pytest.fail(f"the zygote process ended (status {self.proc.wait()})")
        return int(answer)

    def run(self, out_dir: Path) -> int:
        return self._ask(f"run {out_dir}")

    def wait(self, pid: int) -> int:
        return self._ask(f"wait {pid}")

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=WAIT_S)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie has ended; it only awaits its parent's wait
        return f.read().split(")")[-1].split()[0] != "Z"


def _last_train_step(out_dir: Path) -> int:
    """The last step logged in metrics.jsonl (a line cut short by a kill is ignored)."""
    try:
        text = (out_dir / "metrics.jsonl").read_text()
    except FileNotFoundError:
        return -1
    step = -1
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("split") == "train":
            step = max(step, record["step"])
    return step


def _checkpoint_step(out_dir: Path) -> int:
    path = out_dir / CHECKPOINT
    if not path.exists():
        return 0
    return int(load_tensors(path)[1]["step"])  # must always be readable: writes are atomic


def _log(out_dir: Path) -> str:
    try:
        return Path(f"{out_dir}.log").read_text()[-3000:]
    except FileNotFoundError:
        return ""


def _wait_for_training(pid: int, out_dir: Path, after_step: int) -> None:
    """Until the child has logged a step past ``after_step`` (so it is past its start-up)."""
    deadline = time.monotonic() + WAIT_S
    while _last_train_step(out_dir) <= after_step:
        if not _alive(pid):
            pytest.fail(f"the training child ended before it was killed:\n{_log(out_dir)}")
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            pytest.fail("the training child made no progress")
        time.sleep(0.005)


def _kill_inside_checkpoint_write(pid: int, out_dir: Path, timeout: float = 5.0) -> bool:
    """SIGKILL the child as soon as a checkpoint temp file appears; False if none was seen in
    time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(n.startswith(f".{CHECKPOINT}.") and n.endswith(".tmp") for n in os.listdir(out_dir)):
            os.kill(pid, signal.SIGKILL)
            return True
        time.sleep(0.0002)
    return False


def _mark_record(out_dir: Path, step: int) -> None:
    """Tag the log record of ``step``: a run resuming there keeps it, a run starting afresh
    drops it."""
    path = out_dir / "metrics.jsonl"
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a kill
            continue
        if record.get("split") == "train" and record["step"] == step:
            lines[i] = json.dumps({**record, "marker": True})
            path.write_text("\n".join(lines) + "\n")
            return
    pytest.fail(f"no log record of step {step}, the checkpoint's step")


def _kill_steps(rng: random.Random) -> list[int]:
    """The step after which each kill comes: one at random in 3..7, 8..12 and 13..17, so that
    at least 7 of the 24 steps are left after the last kill (a child that finished before it
    was killed would test no resume), on a fast machine as on a slow one."""
    return [rng.randint(3 + 5 * k, 2 + 5 * (k + 1)) for k in range(KILLS)]


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_tensors(path)[0]


def test_sigkill_and_resume_gives_bitwise_identical_weights(tmp_path):
    started = time.perf_counter()
    rng = random.Random(20240611)
    reference_dir, killed_dir = tmp_path / "uninterrupted", tmp_path / "killed"
    zygote = Zygote()
    children = []
    resumed_from = [0]
    mid_write = 0
    try:
        reference = zygote.run(reference_dir)
        children.append(reference)
        for k, target in enumerate(_kill_steps(rng)):
            pid = zygote.run(killed_dir)
            children.append(pid)
            _wait_for_training(pid, killed_dir, max(_last_train_step(killed_dir), target - 1))
            if k == 1 and _kill_inside_checkpoint_write(pid, killed_dir):
                mid_write += 1
            else:
                time.sleep(rng.uniform(0.0, 0.03))  # somewhere in the next step or two
                os.kill(pid, signal.SIGKILL)
            status = zygote.wait(pid)
            assert status == -signal.SIGKILL, (
                f"the child ended on its own (status {status}):\n{_log(killed_dir)}"
            )
            step = _checkpoint_step(killed_dir)  # the checkpoint on disk is intact after every kill
            assert step >= resumed_from[-1], "a checkpoint went back in time"
            resumed_from.append(step)
        _mark_record(killed_dir, resumed_from[-1])
        final = zygote.run(killed_dir)
        children.append(final)
        assert zygote.wait(final) == 0, _log(killed_dir)
        assert zygote.wait(reference) == 0, _log(reference_dir)
        zygote.close()
    finally:
        for pid in children:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if zygote.proc.poll() is None:
            zygote.proc.kill()
            zygote.proc.wait()
    assert resumed_from[-1] > 0, "no run got as far as a checkpoint before being killed"

    for name in ("model.safetensors", CHECKPOINT):  # weights, and optimizer state with them
        want, got = _tensors(reference_dir / name), _tensors(killed_dir / name)
        assert want.keys() == got.keys(), name
        different = [k for k in want if not torch.equal(want[k], got[k])]
        assert not different, (
            f"{name}: {len(different)} tensors differ after resuming, e.g. {different[:5]}"
        )
    records = [json.loads(line) for line in (killed_dir / "metrics.jsonl").read_text().splitlines()]
    marked = [r["step"] for r in records if r.get("marker")]
    assert marked == [resumed_from[-1]], (
        "the last run did not resume from the checkpoint (its log was rewritten)"
    )
    summary = json.loads((killed_dir / "summary.json").read_text())
    assert summary["steps"] == MAX_STEPS
    assert _checkpoint_step(killed_dir) == MAX_STEPS
    leftovers = sorted(n for n in os.listdir(killed_dir) if n.endswith(".tmp"))
    assert not leftovers, "the temp file of a killed checkpoint write was not cleaned up"
    print(
        f"\nkill-and-resume: {KILLS} kills, checkpoints at steps {resumed_from[1:]} when killed, "
        f"{mid_write} inside a checkpoint write; {time.perf_counter() - started:.1f} s"
    )


def test_atomic_write_removes_only_temp_files_of_dead_writers(tmp_path):
    import socket

    from mimir_fast._io import atomic_write

    target = tmp_path / "checkpoint-last.safetensors"
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    host = socket.gethostname()
    names = {
        "dead": f".{target.name}.{host}.{gone.pid}.k3j2x9.tmp",  # a writer killed mid-write
        "live": f".{target.name}.{host}.{os.getppid()}.a1b2c3.tmp",  # a running writer (our parent)
        "other_host": f".{target.name}.elsewhere.{gone.pid}.zz9.tmp",  # maybe alive on that host
        "other_file": f".{target.name}.csv.{host}.{gone.pid}.q1.tmp",  # another target's temp file
        "old_style": f".{target.name}.x7y8z9.tmp",
    }
    for name in names.values():
        (tmp_path / name).write_bytes(b"partial")
    atomic_write(target, lambda tmp: Path(tmp).write_bytes(b"complete"))
    assert target.read_bytes() == b"complete"
    left = {kind for kind, name in names.items() if (tmp_path / name).exists()}
    assert left == {"live", "other_host", "other_file", "old_style"}
