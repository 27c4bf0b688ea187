"""The ``trajhook`` command: look at a store without writing Python.

trajhook info runs/maze.h5                       what is in it (also while it is being written)
trajhook plot runs/maze.h5 field.png --step 2000 a maze probe's vector field, or a prompt probe's record
trajhook curves runs/lm.h5 -o curves.png         target log-probs beside the loss, with events
trajhook pca runs/a.h5 runs/b.h5 -o pca.png      per-token-loss (or maze field) trajectories in one PCA basis
trajhook animate runs/maze.h5 maze.gif maze.mp4  the vector field over every recorded step
trajhook report runs/a.h5 runs/b.h5 -o report.html   one offline HTML page, one step slider
trajhook repair runs/maze.h5                     saves what a damaged store still holds

Every error is one line on stderr and exit code 2. To add a subcommand, write ``_<name>_args``
and ``_<name>`` and add one line to :data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from trajhook.errors import TrajhookError
from trajhook.store import TrajectoryLog, load


def describe(log: TrajectoryLog) -> str:
    """A plain-text summary of a loaded store.

    >>> import tempfile, torch, trajhook
    >>> path = tempfile.mkdtemp() + "/run.h5"
    >>> with trajhook.Recorder(path, [trajhook.TensorProbe("lin", torch.ones(1, 2))], 5, wandb=False) as rec:
    ...     for step in range(11):
    ...         recorded = rec.maybe_record(torch.nn.Linear(2, 1), step, loss=0.5)
    ...     rec.mark(8, "LR drop")
    >>> print(describe(load(path)).split("\\n", 1)[1])
    3 records, steps 0..10
    probe lin: output(3, 1, 1) float32
    scalar loss: 11 values, steps 0..10
    event at step 8: LR drop
    """
    lines = [f"{log.path} (trajhook format {log.attrs['trajhook_format']}, created {log.attrs['created']})"]
    steps = log.steps
    lines.append(f"{len(steps)} records" + (f", steps {steps[0]}..{steps[-1]}" if len(steps) else ""))
    for name, probe in log.items():
        shapes = ", ".join(f"{k}{v.shape} {v.dtype}" for k, v in probe.items())
        lines.append(f"probe {name}: {shapes}")
    for name, series in log.scalars.items():
        span = f", steps {series.steps[0]}..{series.steps[-1]}" if len(series.steps) else ""
        lines.append(f"scalar {name}: {len(series.values)} values{span}")
    lines.extend(f"event at step {e.step}: {e.label}" for e in log.events)
    return "\n".join(lines)


# -- choosing probes ---------------------------------------------------------------------------------


def _is_maze(probe: Any) -> bool:
    return "vectors" in probe and {"grid", "cells"} <= probe.metadata.keys()


def _is_prompts(probe: Any) -> bool:
    return "token_loss" in probe or "target_logprob" in probe


def _probe(log: TrajectoryLog, name: str | None, kinds: Sequence[str], purpose: str) -> str:
    """The probe ``name`` (checked), or the first probe of one of ``kinds`` ("maze", "prompts")."""
    tests = {"maze": _is_maze, "prompts": _is_prompts}
    fits = [n for k in kinds for n, p in log.items() if tests[k](p)]  # the first kind first
    wanted = " or ".join(f"{k} probe" for k in kinds)
    if name is not None:
        if name not in log:
            raise TrajhookError(
                f"{str(log.path)!r} has no probe {name!r}; it has {sorted(log)}. HINT: pass --probe with one of those."
            )
        if name not in fits:
            raise TrajhookError(
                f"probe {name!r} in {str(log.path)!r} is not a {wanted}, so {purpose} cannot draw it. "
                f"HINT: pass --probe with one of {fits or sorted(log)}."
            )
        return name
    if not fits:
        raise TrajhookError(
            f"{str(log.path)!r} has no {wanted} (probes: {sorted(log)}). HINT: {purpose} draws "
            + " and ".join({"maze": "MazeProbe", "prompts": "PromptProbe"}[k] for k in kinds)
            + " records."
        )
    return fits[0]


def _save(fig: Any, out: str) -> None:
    try:
        fig.savefig(out, dpi=120)
    except (OSError, ValueError) as err:
        raise TrajhookError(
            f"cannot write {out!r}: {err}. HINT: choose a writable path ending in .png, .pdf or .svg."
        ) from None
    print(f"wrote {out}")


# -- the subcommands -------------------------------------------------------------------------------


def _info_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path")


def _info(args: argparse.Namespace) -> None:
    print(describe(load(args.path)))


def _plot_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path")
    parser.add_argument("out", help="an image file, e.g. field.png")
    parser.add_argument("--step", type=int, default=None, help="a recorded step (default: the last)")
    parser.add_argument("--probe", default=None, help="a maze or prompt probe (default: the first maze probe)")


def _plot(args: argparse.Namespace) -> None:
    log = load(args.path)
    probe = _probe(log, args.probe, ("maze", "prompts"), "plot")
    if _is_maze(log[probe]):
        from trajhook.plots.maze import vector_field_from_log

        fig = vector_field_from_log(log, step=args.step, probe=probe)
    else:
        from trajhook.plots.prompts import prompt_record

        fig = prompt_record(log, step=args.step, probe=probe)
    _save(fig, args.out)


def _curves_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path")
    parser.add_argument("-o", "--out", required=True, help="an image file, e.g. curves.png")
    parser.add_argument("--probe", default=None, help="a prompt probe with targets (default: the first)")
    parser.add_argument("--select", nargs="+", default=None, help="keep targets whose label contains one of these")


def _curves(args: argparse.Namespace) -> None:
    log = load(args.path)
    with_targets = [n for n, p in log.items() if "target_logprob" in p]
    if args.probe is None and not with_targets:
        if not log.scalars:
            raise TrajhookError(
                f"{str(log.path)!r} has no target curves and no scalars to draw. "
                "HINT: give a PromptProbe targets=..., or log the loss with maybe_record(model, step, loss=...)."
            )
        from trajhook.plots.curves import scalar_curves

        fig = scalar_curves(log)
    else:
        probe = _probe(log, args.probe, ("prompts",), "curves")
        if "target_logprob" not in log[probe]:
            raise TrajhookError(
                f"probe {probe!r} in {str(log.path)!r} recorded no targets. HINT: give the PromptProbe targets=..."
            )
        from trajhook.plots.prompts import target_curves

        fig = target_curves(log, probe=probe, select=args.select)
    _save(fig, args.out)


def _pca_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", help="one or more stores of the same probe: one joint basis")
    parser.add_argument("-o", "--out", required=True, help="an image file, e.g. pca.png")
    parser.add_argument("--probe", default=None, help="default: the first prompt probe, else the first maze probe")
    parser.add_argument("--output", default=None, help="the recorded dataset (default: token_loss; maze: vectors)")


def _pca(args: argparse.Namespace) -> None:
    from trajhook.plots.prompts import pca_trajectories
    from trajhook.report.data import run_names

    logs = [load(p) for p in args.paths]
    runs = []
    for name, log in zip(run_names(logs), logs, strict=True):
        probe = args.probe if args.probe is not None else _probe(log, None, ("prompts", "maze"), "pca")
        maze = probe in log and _is_maze(log[probe])
        output = args.output or ("vectors" if maze else "token_loss")
        if probe not in log:
            raise TrajhookError(
                f"{str(log.path)!r} has no probe {probe!r}; it has {sorted(log)}. HINT: pass --probe with one of those."
            )
        if output not in log[probe]:
            raise TrajhookError(
                f"probe {probe!r} in {str(log.path)!r} has no dataset {output!r}; it has {sorted(log[probe])}. "
                "HINT: pass --output with one of those."
            )
        if len(log.steps) < 2:
            raise TrajhookError(f"{str(log.path)!r} has {len(log.steps)} record(s). HINT: a trajectory needs two.")
        runs.append((name, log.steps, log[probe][output], log.events))
    if len(logs) == 1 and maze:  # one maze run: its field at the last step beside the field's trajectory
        from trajhook.plots.field import field_dynamics

        _save(field_dynamics(logs[0], probe=probe, output=output), args.out)
    else:
        _save(pca_trajectories(runs), args.out)


def _animate_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path")
    parser.add_argument("out", nargs="+", help="output files ending in .gif or .mp4")
    parser.add_argument("--probe", default=None, help="maze probe name (default: the first)")
    parser.add_argument("--fps", type=float, default=8.0)


def _animate(args: argparse.Namespace) -> None:
    from trajhook.plots.maze import animate_vector_field

    log = load(args.path)
    for path in animate_vector_field(log, args.out, probe=_probe(log, args.probe, ("maze",), "animate"), fps=args.fps):
        print(f"wrote {path}")


def _report_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", help="one or more stores; several runs share the slider by step")
    parser.add_argument("-o", "--out", required=True, help="the HTML file, e.g. report.html")
    parser.add_argument("--max-frames", type=int, default=120, help="frames per run (first, last, events kept)")


def _report(args: argparse.Namespace) -> None:
    from trajhook.report import write_report

    if args.max_frames < 2:
        raise TrajhookError(f"report: --max-frames {args.max_frames} is below 2. HINT: e.g. --max-frames 120.")
    out = write_report(args.paths, args.out, max_frames=args.max_frames)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")


def _repair_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path")
    parser.add_argument("--out", default=None, help="the new store (default: RUN.repaired.h5 beside it)")


def _repair(args: argparse.Namespace) -> None:
    from trajhook.repair import repair

    out, found = repair(args.path, args.out)
    print(f"wrote {out}: saved {found.summary()}")


Command = tuple[str, str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], None]]
COMMANDS: list[Command] = [
    ("info", "summarize a store (also while it is being written)", _info_args, _info),
    ("plot", "one step of a maze probe (vector field) or a prompt probe, as an image", _plot_args, _plot),
    ("curves", "target log-prob curves beside the loss, with events", _curves_args, _curves),
    ("pca", "PCA trajectories (per-token loss, maze field) of one or more runs, in one basis", _pca_args, _pca),
    ("animate", "the maze vector field over all steps, as GIF and/or MP4", _animate_args, _animate),
    ("report", "one self-contained HTML page with one step slider over every panel", _report_args, _report),
    ("repair", "save the readable committed rows of a damaged store into a new one", _repair_args, _repair),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trajhook", description="Look at a trajhook store.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text, add_arguments, run in COMMANDS:
        command = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(command)
        command.set_defaults(run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except TrajhookError as err:
        print(f"trajhook: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["COMMANDS", "build_parser", "describe", "main"]
