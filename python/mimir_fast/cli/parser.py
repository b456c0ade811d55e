"""The ``mimir-fast`` argument parser: one subcommand per task, training flags from TrainConfig."""

from __future__ import annotations

import argparse

from ..training.config import TrainConfig
from .evaluate_command import add_evaluate_options
from .flags import add_field_flags

__all__ = ["DEFAULT_METHOD", "PROG", "build_parser"]

PROG = "mimir-fast"
DEFAULT_METHOD = {"pretrain": "mae", "finetune": "finetune"}  # each training command's method
TRAIN_COMMANDS = {
    "pretrain": "self-supervised pretraining (MAE by default)",
    "finetune": "supervised finetuning of a (pretrained) MaskedViT",
}
CONFIG_EPILOG = (
    "Config files (.toml, .json, .yaml) hold TrainConfig fields as top-level keys or under a "
    "[train] table, e.g.\n  [train]\n  epochs = 20\n  batch_size = 128\n"
    "  model_overrides = { depth = 6 }"
)
TRAIN_FLAGS_TITLE = (
    "training options (TrainConfig fields; also spelled with underscores, e.g. --batch_size)"
)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32)


def build_parser() -> argparse.ArgumentParser:
    """The ``mimir-fast`` argument parser with its subcommands (the command's name lands in
    ``args.command``)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        formatter_class=_HelpFormatter,
        allow_abbrev=False,
        description="mimir-fast: robust masked image modeling on Vision Transformers.",
        epilog="Run 'mimir-fast COMMAND --help' for the options of a command.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for command, summary in TRAIN_COMMANDS.items():
        _add_train_command(sub, command, summary)
    _add_demo_command(sub)
    _add_evaluate_command(sub)
    _add_command(
        sub,
        "info",
        help="print versions, build and device information",
        description="Print versions, build and device information.",
    )
    return parser


def _add_command(sub, name: str, **kwargs) -> argparse.ArgumentParser:
    """A subcommand with the common formatting."""
    return sub.add_parser(name, formatter_class=_HelpFormatter, allow_abbrev=False, **kwargs)


def _add_train_command(sub, command: str, summary: str) -> None:
    p = _add_command(
        sub,
        command,
        help=summary,
        description=f"{summary[0].upper()}{summary[1:]}.\n\nSettings are resolved as TrainConfig "
        "defaults <- --config FILE <- the flags given here.",
        epilog=CONFIG_EPILOG,
    )
    p.add_argument(
        "--config",
        metavar="FILE",
        help="TOML, JSON or YAML file of TrainConfig values (flags given here override it)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the resolved TrainConfig as JSON and exit without training",
    )
    shown = {"method": DEFAULT_METHOD[command], "out_dir": "runs/METHOD"}
    add_field_flags(p, TrainConfig, TRAIN_FLAGS_TITLE, shown)


def _add_demo_command(sub) -> None:
    p = _add_command(
        sub,
        "demo",
        help="run the end-to-end demo (pretrain, finetune, report)",
        description="Run the end-to-end demo: pretrain, finetune and write a report.",
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        default="mimir-fast-demo",
        help="folder for the demo's runs, figures and report (default: mimir-fast-demo)",
    )
    p.add_argument("--quick", action="store_true", help="a smaller, faster demo (for a smoke test)")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show progress bars (default: the demo's own choice)",
    )


def _add_evaluate_command(sub) -> None:
    p = _add_command(
        sub,
        "evaluate",
        help="robust accuracy of a trained classifier under attacks",
        description="Evaluate a MaskedViT classifier, alone or behind a defense (--defense): "
        "clean and robust accuracy per attack and eps, with gradient-masking checks; writes "
        "evaluation.json, evaluation.md, robust_accuracy_vs_eps.png and samples.safetensors. "
        "Every finished batch is kept in DIR/batches: rerun the same command after a crash to "
        "resume. --corruptions all (or fog:3,snow, ...) evaluates under common corruptions "
        "instead (or besides, with --attacks): corruptions.json, corruptions.md and "
        "corruption_accuracy.png, with CE and mCE against --baseline.",
    )
    p.add_argument(
        "model", metavar="MODEL", help="a MaskedViT file (model.safetensors) or a run's checkpoint"
    )
    p.add_argument(
        "--data", default="digits", help="dataset spec, as for training (default: digits)"
    )
    p.add_argument("--split", default="test", help="which split to evaluate (default: test)")
    add_evaluate_options(p)
