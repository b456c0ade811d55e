"""``compile=``: the attack runs the model through ``torch.compile`` and finds what eager does.

The ``aot_eager`` backend traces the model with TorchDynamo and AOTAutograd (the path every
backend shares) without generating code, so the test stays fast on the CPU.
"""

from __future__ import annotations

import pytest
import torch
from mimir_fast.attacks import APGD, PGD
from torch import nn

COMPILE = {"backend": "aot_eager", "dynamic": True}


@pytest.fixture(scope="module")
def mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 32), nn.GELU(), nn.Linear(32, 10)).eval()
    x = torch.rand(12, 3, 4, 4)
    y = torch.randint(0, 10, (12,))
    return model, x, y


@pytest.mark.parametrize(
    "make",
    [
        lambda m, **kw: PGD(m, 0.05, 0.01, 5, seed=1, **kw),
        lambda m, **kw: APGD(m, 0.05, steps=5, restarts=2, seed=1, **kw),
    ],
    ids=["pgd", "apgd-restarts"],
)
def test_compiled_attack_equals_eager(mlp, make, monkeypatch):
    model, x, y = mlp
    compiled_models = []
    real_compile = torch.compile

    def spy(target, **options):
        compiled_models.append((target, options))
        return real_compile(target, **options)

    monkeypatch.setattr(torch, "compile", spy)
    attack = make(model, compile=COMPILE)
    x_adv = attack(x, y)
    attack(x[:5], y[:5])  # another batch size: the compiled model is kept
    assert compiled_models == [(model, COMPILE)]
    assert attack.model is model  # restored after the call
    torch.testing.assert_close(x_adv, make(model)(x, y), rtol=0, atol=1e-6)
    assert not torch.equal(x_adv, x)


@pytest.mark.parametrize("bad", ["yes", 1, ["mode"]])
def test_compile_option_is_checked(mlp, bad):
    with pytest.raises(ValueError, match="compile"):
        PGD(mlp[0], 0.05, compile=bad)


def test_autoattack_compiles_every_component(mlp):
    from mimir_fast.attacks import AutoAttack

    model, x, y = mlp
    attack = AutoAttack(model, 0.05, steps=3, n_queries=30, compile=COMPILE)
    assert [a.compile_options for a in attack.attacks] == [COMPILE] * 4
    eager = AutoAttack(model, 0.05, steps=3, n_queries=30)
    torch.testing.assert_close(attack(x, y), eager(x, y), rtol=0, atol=1e-6)
