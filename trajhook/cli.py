"""The ``trajhook`` command: look at a store without writing Python.

trajhook info runs/maze.h5                  what is in it
trajhook animate runs/maze.h5 maze.gif maze.mp4
trajhook plot runs/maze.h5 field.png --step 2000
trajhook repair runs/maze.h5                saves what a damaged store still holds
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

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


def _maze_probe(log: TrajectoryLog, name: str | None) -> str:
    if name is not None:
        return name
    mazes = [n for n, p in log.items() if "vectors" in p and "grid" in p.metadata]
    if not mazes:
        raise TrajhookError(f"{str(log.path)!r} has no maze probe. HINT: this command draws MazeProbe records.")
    return mazes[0]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trajhook", description="Look at a trajhook store.")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="summarize a store")
    info.add_argument("path")
    animate = sub.add_parser("animate", help="the maze vector field over all steps, as GIF and/or MP4")
    animate.add_argument("path")
    animate.add_argument("out", nargs="+", help="output files ending in .gif or .mp4")
    animate.add_argument("--probe", default=None, help="maze probe name (default: the first)")
    animate.add_argument("--fps", type=float, default=8.0)
    plot = sub.add_parser("plot", help="the maze vector field at one step, as an image")
    plot.add_argument("path")
    plot.add_argument("out", help="an image file, e.g. field.png")
    plot.add_argument("--step", type=int, default=None, help="a recorded step (default: the last)")
    plot.add_argument("--probe", default=None)
    fix = sub.add_parser("repair", help="save the readable committed rows of a damaged store into a new one")
    fix.add_argument("path")
    fix.add_argument("--out", default=None, help="the new store (default: RUN.repaired.h5 beside it)")
    args = parser.parse_args(argv)
    try:
        if args.command == "repair":
            from trajhook.repair import repair

            out, found = repair(args.path, args.out)
            print(f"wrote {out}: saved {found.summary()}")
            return 0
        log = load(args.path)
        if args.command == "info":
            print(describe(log))
        elif args.command == "animate":
            from trajhook.plots.maze import animate_vector_field

            for path in animate_vector_field(log, args.out, probe=_maze_probe(log, args.probe), fps=args.fps):
                print(f"wrote {path}")
        else:
            from trajhook.plots.maze import vector_field_from_log

            fig = vector_field_from_log(log, step=args.step, probe=_maze_probe(log, args.probe))
            fig.savefig(args.out, dpi=120)
            print(f"wrote {args.out}")
    except TrajhookError as err:
        print(f"trajhook: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["describe", "main"]
