"""The ``trajhook`` command: look at a store without writing Python.

trajhook info runs/maze.h5                          what is in it (also while it is being written)
trajhook plot runs/maze.h5 -o field.png --step 2000 a maze probe's vector field, or a prompt probe's record
trajhook curves runs/lm.h5 -o curves.png            target log-probs beside the loss, with events
trajhook pca runs/a.h5 runs/b.h5 -o pca.png         per-token-loss (or maze field) trajectories in one PCA basis
trajhook animate runs/maze.h5 -o maze.gif maze.mp4  the vector field over every recorded step
trajhook report runs/a.h5 runs/b.h5 -o report.html  one offline HTML page, one step slider
trajhook serve runs/a.h5 runs/b.h5                  a live page that follows the stores while they are written
trajhook replay ckpts/*.pth -o replay.h5 --model m:make --probes m:probes   a checkpoint series into a store
trajhook verify runs/maze.h5                        checks every value against its checksum (exit 1: damage)
trajhook repair runs/maze.h5 [-o fixed.h5]          saves what a damaged store still holds

Every subcommand that writes files takes them as ``-o/--out`` (``plot`` and ``animate`` also take
them positionally, as before). Every error is one line on stderr and exit code 2. To add a
subcommand, write ``_<name>_args`` and ``_<name>`` and add one line to :data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

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
    >>> print(describe(load(path)).split("\\n", 1)[1])  # doctest: +ELLIPSIS
    3 records, steps 0..10
    probe lin: output(3, 1, 1) float32
    scalar loss: 11 values, steps 0..10
    event at step 8: LR drop
    session 1 from step 0: ... torch threads ..., trajhook 0.1.0, torch ...
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
    lines.extend(session_line(i, session) for i, session in enumerate(getattr(log, "sessions", []), 1))
    return "\n".join(lines)


def session_line(number: int, session: dict[str, Any]) -> str:
    """One Recorder session of ``log.sessions`` in a line: where it started, where it ran, from which code.

    >>> session_line(2, {"first_step": 3000, "started": "2026-12-02T10:00:00+00:00", "host": "vm", "torch_threads": 2,
    ...     "versions": {"trajhook": "0.1.0", "torch": "2.13.0"}, "git": {"commit": "0123456789ab", "dirty": True},
    ...     "argv": ["train.py", "--lr", "0.1"]}).split(", ")
    ['session 2 from step 3000: 2026-12-02T10:00:00+00:00 on vm', 'torch threads 2', 'trajhook 0.1.0', \
'torch 2.13.0', 'git 0123456789ab (dirty): train.py --lr 0.1']
    """
    start = "wrote nothing" if session.get("first_step") is None else f"from step {session['first_step']}"
    if "unrecorded" in session:
        return f"session {number} {start}: {session['unrecorded']}"
    parts = [f"{session.get('started', '?')} on {session.get('host', '?')}"]
    parts.append(f"torch threads {session.get('torch_threads', '?')}")
    parts += [f"{name} {version}" for name, version in (session.get("versions") or {}).items()]
    git = session.get("git")
    if git:
        dirty = {True: " (dirty)", False: "", None: " (dirty: unknown)"}[git.get("dirty")]
        parts.append(f"git {git.get('commit', '?')}{dirty}")
    command = " ".join(shlex.quote(a) for a in session.get("argv", []))
    return f"session {number} {start}: {', '.join(parts)}" + (f": {command}" if command else "")


# -- choosing probes ---------------------------------------------------------------------------------


# What each kind-based choice accepts: the probe kinds (``ProbeLog.kind``) that draw as a maze or as prompts.
_KINDS = {"maze": ("maze",), "prompts": ("prompts", "token_loss")}


def _is_maze(probe: Any) -> bool:
    return probe.kind in _KINDS["maze"]


def _is_prompts(probe: Any) -> bool:
    return probe.kind in _KINDS["prompts"]


def _probe(log: TrajectoryLog, name: str | None, kinds: Sequence[str], purpose: str) -> str:
    """The probe ``name`` (checked), or the first probe of one of ``kinds`` ("maze", "prompts")."""
    fits = [n for k in kinds for n, p in log.items() if p.kind in _KINDS[k]]  # the first kind first
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


def _add_out(
    parser: argparse.ArgumentParser,
    help_text: str,
    *,
    many: bool = False,
    required: bool = True,
    positional: bool = False,
) -> None:
    """The one way every subcommand takes the file(s) it writes: ``-o/--out``.

    ``positional=True`` also accepts them after the store's path, as ``plot`` and ``animate`` did
    before; :func:`_out` then checks that exactly one of the two forms was used.
    """
    nargs = "+" if many else None
    parser.add_argument("-o", "--out", nargs=nargs, default=None, help=help_text)
    if positional:
        parser.add_argument("out_positional", nargs="*" if many else "?", default=None, help=argparse.SUPPRESS)
    parser.set_defaults(out_required=required)


def _out(args: argparse.Namespace) -> Any:
    """The output file(s) given with ``-o/--out`` or, where allowed, positionally."""
    given = getattr(args, "out_positional", None) or None
    if given is not None and args.out is not None:
        raise TrajhookError(
            f"{args.command}: the output is given twice ({given} and -o {args.out}). HINT: pass it once, with -o."
        )
    out = args.out if args.out is not None else given
    if out is None and args.out_required:
        raise TrajhookError(f"{args.command}: no output file. HINT: pass one with -o, e.g. -o out.png.")
    return out


def _plot_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path")
    _add_out(parser, "an image file, e.g. field.png", positional=True)
    parser.add_argument("--step", type=int, default=None, help="a recorded step (default: the last)")
    parser.add_argument("--probe", default=None, help="a maze or prompt probe (default: the first maze probe)")


def _plot(args: argparse.Namespace) -> None:
    _out(args)  # a missing output fails before the store is read
    log = load(args.path)
    probe = _probe(log, args.probe, ("maze", "prompts"), "plot")
    if _is_maze(log[probe]):
        from trajhook.plots.maze import vector_field_from_log

        fig = vector_field_from_log(log, step=args.step, probe=probe)
    else:
        from trajhook.plots.prompts import prompt_record

        fig = prompt_record(log, step=args.step, probe=probe)
    _save(fig, _out(args))


def _curves_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path")
    _add_out(parser, "an image file, e.g. curves.png")
    parser.add_argument("--probe", default=None, help="a prompt probe with targets (default: the first)")
    parser.add_argument("--select", nargs="+", default=None, help="keep targets whose label contains one of these")


def _curves(args: argparse.Namespace) -> None:
    out = _out(args)
    log = load(args.path)
    with_targets = [n for n, p in log.items() if _is_prompts(p) and "target_logprob" in p]
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
    _save(fig, out)


def _pca_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", help="one or more stores of the same probe: one joint basis")
    _add_out(parser, "an image file, e.g. pca.png")
    parser.add_argument("--probe", default=None, help="default: the first prompt probe, else the first maze probe")
    parser.add_argument("--output", default=None, help="the recorded dataset (default: token_loss; maze: vectors)")


def _pca(args: argparse.Namespace) -> None:
    from trajhook.plots.prompts import pca_trajectories
    from trajhook.report.data import run_names

    out = _out(args)
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

        _save(field_dynamics(logs[0], probe=probe, output=output), out)
    else:
        _save(pca_trajectories(runs), out)


def _animate_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path")
    _add_out(parser, "output files ending in .gif or .mp4", many=True, positional=True)
    parser.add_argument("--probe", default=None, help="maze probe name (default: the first)")
    parser.add_argument("--fps", type=float, default=8.0)


def _animate(args: argparse.Namespace) -> None:
    from trajhook.plots.maze import animate_vector_field

    out = _out(args)
    log = load(args.path)
    for path in animate_vector_field(log, out, probe=_probe(log, args.probe, ("maze",), "animate"), fps=args.fps):
        print(f"wrote {path}")


def _report_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", help="one or more stores; several runs share the slider by step")
    _add_out(parser, "the HTML file, e.g. report.html")
    parser.add_argument("--max-frames", type=int, default=120, help="frames per run (first, last, events kept)")


def _report(args: argparse.Namespace) -> None:
    from trajhook.report import write_report

    if args.max_frames < 2:
        raise TrajhookError(f"report: --max-frames {args.max_frames} is below 2. HINT: e.g. --max-frames 120.")
    out = write_report(args.paths, _out(args), max_frames=args.max_frames)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")


def _serve_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths",
        nargs="+",
        help="stores, followed while they are written; a folder: every store under it, and new ones as they appear",
    )
    parser.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1; any other host needs a token")
    parser.add_argument("--port", type=int, default=8765, help="default 8765; 0 picks a free port")
    parser.add_argument("--wait", action="store_true", help="follow stores that do not exist yet")


def _serve(args: argparse.Namespace) -> None:
    from trajhook.serve.server import serve

    serve(args.paths, host=args.host, port=args.port, wait=args.wait)


def _repair_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path")
    _add_out(parser, "the new store (default: RUN.repaired.h5 beside it)", required=False)


def _repair(args: argparse.Namespace) -> None:
    from trajhook.store.repair import repair

    out, found = repair(args.path, _out(args))
    print(f"wrote {out}: saved {found.summary()}")


def _verify_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path")


def _verify(args: argparse.Namespace) -> int:
    from trajhook.store.reader import verify

    damage = verify(args.path)
    if not damage.checked:
        raise TrajhookError(
            f"verify: {args.path!r} was written before checksums (format < 3): nothing to check against. "
            "HINT: a Recorder that resumes it rebuilds it with checksums."
        )
    if damage:
        print(
            f"trajhook: {args.path}: {damage.summary()}. HINT: `trajhook repair {args.path}` saves every intact row "
            "into a new store.",
            file=sys.stderr,
        )
        return 1
    print(f"{args.path}: every committed value matches its checksum")
    return 0


def _replay_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoints", nargs="+", help="checkpoint files or folders, a folder of them, or a glob")
    _add_out(parser, "the store, e.g. replay.h5 (an existing one is continued after its last step)")
    parser.add_argument("--model", default=None, help="pkg.module:factory (default: what the checkpoint describes)")
    parser.add_argument("--probes", required=True, help="pkg.module:make_probes, a function returning the probes")
    parser.add_argument("--workers", type=int, default=1, help="processes loading and probing (default 1)")
    parser.add_argument("--every", type=int, default=1, help="replay a checkpoint every N steps (default: each)")


def _replay(args: argparse.Namespace) -> None:
    from trajhook.replay import replay

    result = replay(
        args.checkpoints,
        args.probes,
        _out(args),
        model=args.model,
        workers=args.workers,
        every_n_steps=args.every,
        progress=True,
        wandb=False,
    )
    print(result.summary())
    for path, why in result.skipped:
        print(f"skipped {path}: {why}")


Command = tuple[str, str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int | None]]
COMMANDS: list[Command] = [
    ("info", "summarize a store (also while it is being written)", _info_args, _info),
    ("plot", "one step of a maze probe (vector field) or a prompt probe, as an image", _plot_args, _plot),
    ("curves", "target log-prob curves beside the loss, with events", _curves_args, _curves),
    ("pca", "PCA trajectories (per-token loss, maze field) of one or more runs, in one basis", _pca_args, _pca),
    ("animate", "the maze vector field over all steps, as GIF and/or MP4", _animate_args, _animate),
    ("report", "one self-contained HTML page with one step slider over every panel", _report_args, _report),
    (
        "serve",
        "a live page following the stores while they are written, one slider over every panel",
        _serve_args,
        _serve,
    ),
    ("replay", "record probes on a checkpoint series into a store, as a live run would have", _replay_args, _replay),
    ("verify", "check every committed value against its checksum; exit 1 if any is damaged", _verify_args, _verify),
    ("repair", "save the readable, intact committed rows of a damaged store into a new one", _repair_args, _repair),
]


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr with exit code 2, like every other error."""

    def error(self, message: str) -> NoReturn:
        where = self.prog.removeprefix("trajhook").strip() or "error"
        self.exit(2, f"trajhook: {where}: {message}. HINT: see {self.prog} -h.\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="trajhook", description="Look at a trajhook store.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text, add_arguments, run in COMMANDS:
        command = sub.add_parser(name, help=help_text, description=help_text)  # a _Parser too
        add_arguments(command)
        command.set_defaults(run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args) or 0
    except TrajhookError as err:
        print(f"trajhook: {' '.join(str(err).split())}", file=sys.stderr)  # one line
        return 2


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["COMMANDS", "build_parser", "describe", "main"]
