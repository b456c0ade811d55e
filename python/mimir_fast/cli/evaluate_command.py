"""``mimir-fast evaluate``: its options, and the command that reads them and calls
:func:`mimir_fast.evaluate.evaluate`.

A defended model is ``--defense nim:PATH`` (:class:`~mimir_fast.defenses.NIMDefense` with the
autoencoder saved at PATH, noise ``--sigma``) or ``--defense impure:PATH``
(:class:`~mimir_fast.defenses.IMPurePurifier`, ``--groups`` patch groups); ``--eot`` sets the
gradients white-box attacks average per step. The report equals the API's
``evaluate(model, data, defense=NIMDefense(...), eot_samples=...)`` with the same settings.
``--corruptions`` evaluates under common corruptions
(:mod:`~mimir_fast.cli.corruption_options`): alone, or beside ``--attacks`` when given.
``--norm l1`` is the L1 ball intersected with [0, 1]: its attacks are PGD and APGD's (AutoAttack
runs APGD-CE with 5 restarts then APGD-T with 5 target classes there, both from larger radii),
and without ``--eps`` its radius is 12 on 32x32 images.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..report.corruptions import CORRUPTION_MD
from .corruption_options import (
    add_corruption_options,
    corruption_options,
    load_baseline,
    option_errors,
)
from .errors import CLIError

__all__ = [
    "AUTOATTACK_VERSIONS",
    "DEFENSE_KINDS",
    "add_evaluate_options",
    "attack_specs",
    "build_defense",
    "check_eot",
    "check_norm",
    "cmd_evaluate",
    "parse_defense",
    "parse_eps",
]

DEFAULT_ATTACKS = "pgd,autoattack"  # --attacks when neither it nor --corruptions is given
NORMS = ("linf", "l2", "l1")  # --norm
# the attacks with a form for --norm l1 (attacks.factory.L1_ATTACK_NAMES and autoattack)
L1_ATTACKS = "pgd, apgd, apgd-ce, apgd-dlr, apgd-t, pgd-mi, pgd-feature, autoattack"
DEFENSE_KINDS = ("nim", "impure")  # --defense KIND:PATH
AUTOATTACK_VERSIONS = ("standard", "plus", "rand")  # --version (AutoAttack's "custom": --attacks)
DEFAULT_SIGMA = 75.0  # NIM's noise on the 0..255 scale
DEFAULT_GROUPS = 4  # IMPure's patch groups


# ---------------------------------------------------------------------- options
def add_evaluate_options(p: argparse.ArgumentParser) -> None:
    """Every option of ``evaluate`` after MODEL, ``--data`` and ``--split``."""
    _add_attack_options(p)
    _add_defense_options(p)
    _add_evaluation_run_options(p)
    add_corruption_options(p)


def _add_attack_options(p: argparse.ArgumentParser) -> None:
    """``evaluate``'s choice of attacks, radii and threat model."""
    p.add_argument(
        "--attacks",
        default=None,
        help="comma-separated: fgsm, pgd, mifgsm, apgd, apgd-dlr, apgd-t, square, autoattack, mim "
        f"(default: {DEFAULT_ATTACKS}; none with --corruptions); with --norm l1 only {L1_ATTACKS}",
    )
    p.add_argument(
        "--eps",
        default=None,
        help="comma-separated radii; fractions like 8/255 allowed (default: 2/255,4/255,8/255; "
        "with --norm l1: 12 on 32x32 images, required on others)",
    )
    p.add_argument(
        "--norm",
        choices=NORMS,
        default="linf",
        help="threat model: linf, l2, or l1 (the L1 ball intersected with the [0, 1] image "
        "box; AutoAttack runs APGD-CE and APGD-T there) (default: linf)",
    )
    p.add_argument("--steps", type=int, default=None, help="override the attacks' iteration counts")
    p.add_argument(
        "--n-queries", type=int, default=None, help="Square's query budget (default 5000)"
    )
    p.add_argument(
        "--version",
        choices=AUTOATTACK_VERSIONS,
        default=None,
        help="AutoAttack's version (default: standard; rand for a random defense)",
    )
    p.add_argument(
        "--threat",
        choices=("white", "gray", "black"),
        default="white",
        help="white-box, gray-box (classifier only) or black-box (default: white)",
    )


def _add_defense_options(p: argparse.ArgumentParser) -> None:
    """``evaluate``'s defense in front of the classifier and the EOT count."""
    p.add_argument(
        "--defense",
        metavar="KIND:PATH",
        default=None,
        help="purify inputs first: nim:PATH or impure:PATH, PATH a saved autoencoder "
        "(model.safetensors) predicting pixels (default: none)",
    )
    p.add_argument(
        "--sigma",
        type=float,
        default=None,
        help=f"noise of --defense nim on the 0..255 scale (default: {DEFAULT_SIGMA:g})",
    )
    p.add_argument(
        "--groups",
        type=int,
        default=None,
        help=f"patch groups of --defense impure (default: {DEFAULT_GROUPS})",
    )
    p.add_argument(
        "--eot",
        type=int,
        default=None,
        help="gradients white-box attacks average per step (default: the pipeline's, "
        "20 for a random one)",
    )


def _add_evaluation_run_options(p: argparse.ArgumentParser) -> None:
    """``evaluate``'s batch size, image count, seed, device, fast path, checks and output."""
    p.add_argument(
        "--batch-size", type=int, default=128, help="images per attack batch (default: 128)"
    )
    p.add_argument("--max-images", type=int, default=None, help="evaluate only the first N images")
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw (default: 0)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ... (default: auto)")
    p.add_argument(
        "--kernels",
        choices=("auto", "torch", "triton"),
        default="auto",
        help="projected-step fast path (default: auto = Triton on CUDA)",
    )
    p.add_argument(
        "--no-sanity-checks",
        dest="sanity_checks",
        action="store_false",
        help="skip the gradient-masking checks",
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        default="mimir-fast-eval",
        help="report folder; finished batches are kept there and a rerun with the same "
        "options resumes from them (default: mimir-fast-eval)",
    )
    p.add_argument(
        "--restart",
        action="store_true",
        help="delete the batches an earlier run finished in --out and start over",
    )
    p.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=True, help="show progress bars"
    )


# ---------------------------------------------------------------------- reading the options
def parse_eps(text: str | None) -> list[float] | None:
    """``--eps`` as radii: numbers or fractions like 8/255, each > 0 (None: not given, the
    evaluation's default for the norm)."""
    if text is None:
        return None
    values = []
    for part in text.split(","):
        num, _, den = part.strip().partition("/")
        try:
            values.append(float(num) / (float(den) if den else 1.0))
        except (ValueError, ZeroDivisionError):
            raise CLIError(
                f"--eps: cannot read {part!r}; use numbers or fractions like 8/255"
            ) from None
        if not values[-1] > 0:
            raise CLIError(f"--eps: every radius must be > 0, got {part.strip()!r}")
    return values


def attack_specs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """``--attacks`` as attack specs, with ``--steps``, ``--n-queries`` and ``--version`` where
    they apply."""
    specs = []
    text = DEFAULT_ATTACKS if args.attacks is None else args.attacks
    for name in (a.strip() for a in text.split(",") if a.strip()):
        spec: dict[str, Any] = {"name": name}
        if args.steps is not None and name not in ("fgsm", "square"):
            spec["steps"] = args.steps
        if args.n_queries is not None and name in ("square", "autoattack"):
            spec["n_queries"] = args.n_queries
        if args.version is not None and name == "autoattack":
            spec["version"] = args.version
        specs.append(spec)
    if args.version is not None and not any(s["name"] == "autoattack" for s in specs):
        raise CLIError("--version sets AutoAttack's version: add autoattack to --attacks")
    return specs


def check_norm(args: argparse.Namespace, specs: list[dict[str, Any]]) -> None:
    """Every attack of ``--attacks`` (and AutoAttack's ``--version``) has a form for
    ``--norm``; checked before the model is loaded."""
    from ..attacks.registry import attack_specs as named_specs
    from ..attacks.registry import check_specs_norm

    if args.norm == "l1" and args.version == "plus":
        raise CLIError(
            "--version plus runs FAB and Square, which have no form for --norm l1; use "
            "standard (APGD-CE, APGD-T) or rand"
        )
    try:
        check_specs_norm(named_specs(specs), args.norm)
    except ValueError as e:
        raise CLIError(f"--attacks: {e}") from None


def parse_defense(text: str) -> tuple[str, Path]:
    """``--defense KIND:PATH`` -> (kind, path of an existing file)."""
    kind, sep, path = text.partition(":")
    kind = kind.strip().lower()
    if not sep or not path.strip() or kind not in DEFENSE_KINDS:
        raise CLIError(
            f"--defense: cannot read {text!r}; use nim:PATH or impure:PATH, PATH the "
            "autoencoder's model.safetensors"
        )
    file = Path(path.strip())
    if not file.is_file():
        raise CLIError(f"--defense: no autoencoder file at {str(file)!r}")
    return kind, file


def build_defense(args: argparse.Namespace, device: Any, classifier: Any) -> Any:
    """The purifier of ``--defense`` in front of ``classifier`` (None without one), checking
    ``--sigma`` and ``--groups``, and that the autoencoder takes the classifier's images."""
    from ..defenses import IMPurePurifier, NIMDefense
    from ..models import MaskedViT

    kind, file = parse_defense(args.defense) if args.defense is not None else (None, None)
    if args.sigma is not None and kind != "nim":
        raise CLIError("--sigma is the noise of --defense nim:PATH; give that defense")
    if args.groups is not None and kind != "impure":
        raise CLIError("--groups is the patch count of --defense impure:PATH; give that defense")
    if kind is None:
        return None
    if kind == "nim" and args.sigma is not None and not args.sigma >= 0:
        raise CLIError(f"--sigma must be >= 0 (0..255 scale), got {args.sigma}")
    try:
        autoencoder = MaskedViT.load(file, map_location=device).eval()
        _check_same_images(autoencoder, classifier, file)
        if kind == "nim":
            return NIMDefense(autoencoder, DEFAULT_SIGMA if args.sigma is None else args.sigma)
        return IMPurePurifier(autoencoder, DEFAULT_GROUPS if args.groups is None else args.groups)
    except ValueError as e:
        option = "--groups" if "num_groups" in str(e) else "--defense"
        raise CLIError(f"{option}: {e}") from None


def _check_same_images(autoencoder: Any, classifier: Any, file: Path) -> None:
    """The autoencoder must take the classifier's images (channels and size)."""
    ours, theirs = (
        f"{m.config.in_chans} channels of {m.config.img_size} pixels"
        for m in (autoencoder, classifier)
    )
    if ours != theirs:
        raise CLIError(f"--defense: the autoencoder {str(file)!r} takes {ours}, the model {theirs}")


def check_eot(eot: int | None) -> int | None:
    """``--eot``: None, or an integer >= 1."""
    if eot is not None and eot < 1:
        raise CLIError(f"--eot must be an integer >= 1, got {eot}")
    return eot


# ---------------------------------------------------------------------- the command
def cmd_evaluate(args: argparse.Namespace) -> int:
    """Run ``mimir-fast evaluate``; rank 0 prints the markdown report."""
    from .. import distributed
    from ..training.prepare import resolve_device

    # under torchrun every process evaluates its share of the images; rank 0 writes the report
    ctx, device = distributed.setup(resolve_device(args.device))
    try:
        reports = _evaluate_on(args, device)
    finally:
        distributed.teardown(ctx)
    if ctx.is_main:
        print("\n".join((Path(args.out) / name).read_text() for name in reports))
    return 0  # gradient-masking warnings are part of the printed report


def _evaluate_on(args: argparse.Namespace, device: Any) -> list[str]:
    """Run the evaluation; the names of the markdown reports written to ``--out``."""
    from ..data import build_dataset
    from ..evaluate import evaluate
    from ..evaluation.resume import ResumeMismatch
    from ..models import MaskedViT

    corruptions = corruption_options(args)
    if args.attacks is None and corruptions.corruptions is not None:
        return _corruptions_only(args, device, corruptions)
    specs, eps, eot = attack_specs(args), parse_eps(args.eps), check_eot(args.eot)
    check_norm(args, specs)
    model = MaskedViT.load(args.model, map_location=device)
    defense = build_defense(args, device, model)
    baseline = load_baseline(corruptions.baseline, device)
    data = build_dataset(args.data, args.split, image_size=model.config.img_size)
    try:
        with option_errors():
            evaluate(
                model,
                data,
                attacks=specs,
                eps=eps,
                defense=defense,
                threat=args.threat,
                batch_size=args.batch_size,
                max_images=args.max_images,
                out_dir=args.out,
                seed=args.seed,
                progress=args.progress,
                norm=args.norm,
                sanity_checks=args.sanity_checks,
                kernels=args.kernels,
                device=device,
                eot_samples=eot,
                resume=not args.restart,
                corruptions=corruptions.corruptions,
                severities=corruptions.severities,
                baseline=baseline,
            )
    except ResumeMismatch as e:
        raise CLIError(f"{e} (on the command line: --restart)") from None
    return ["evaluation.md"] + ([CORRUPTION_MD] if corruptions.corruptions is not None else [])


def _corruptions_only(args: argparse.Namespace, device: Any, options: Any) -> list[str]:
    """``--corruptions`` without ``--attacks``: the corruption evaluation alone."""
    from ..data import build_dataset
    from ..evaluation.corruptions import evaluate_corruptions
    from ..models import MaskedViT

    model = MaskedViT.load(args.model, map_location=device)
    defense = build_defense(args, device, model)
    baseline = load_baseline(options.baseline, device)
    data = build_dataset(args.data, args.split, image_size=model.config.img_size)
    with option_errors():
        evaluate_corruptions(
            model,
            data,
            options.corruptions,
            options.severities,
            baseline=baseline,
            defense=defense,
            batch_size=args.batch_size,
            max_images=args.max_images,
            out_dir=args.out,
            seed=args.seed,
            progress=args.progress,
            device=device,
        )
    return [CORRUPTION_MD]
