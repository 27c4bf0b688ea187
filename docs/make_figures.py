"""Draw the README's PPO maze figures from a trajhook store, each with a caption naming the command and the machine.

    python docs/make_figures.py docs/runs/ppo_procgen_maze.h5                 # figures into docs/images
    python docs/make_figures.py /work/ppo_run/ppo_procgen_maze.h5 --export docs/runs/ppo_procgen_maze.h5

Reads only the store (written by ``examples/ppo_procgen_maze.py``): the recorded direction
probabilities of the held-out probe level, the level's grid and cheese, and the run's metadata
(its command, arguments and machine). Writes

- ``ppo_maze_agreement.png``: the share of probed cells whose strongest move starts a shortest
  path to the cheese, against env steps, for every maze probe, with the best one-step baseline (a move
  chosen from the walls next to the mouse and, greedily, the straight line to the cheese: ``baseline_agreements``);
  beside it, for the drawn probe, that share on the nearest, middle and farthest third of the cells
  and the share whose strongest move runs into a wall (printed as a table too);
- ``ppo_maze_fields.png``: the vector field at a few steps (``--steps``; default: the field's
  stages, see ``default_steps``);
- ``ppo_maze_dynamics.png``: the field at the last record beside the field's PCA trajectory
  (its essential dynamics: turns circled, the live stage events crossed);
- ``ppo_maze_training.gif``: the same pair over every record, the current step's point marked
  (the README's headline);
- ``ppo_maze_captions.md``: one caption per figure, naming the command that drew it, the command
  that trained the run, and both machines.

``--export DEST`` also copies the store with chunks that fit its rows: a store being written
reserves a 4 MiB chunk per dataset, so a finished store of a few MB would take tens of MB in git.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

import h5py
import numpy as np

import trajhook
from trajhook.analysis.maze import (
    MOVES,
    baseline_agreements,
    bfs_distances,
    goal_agreements,
    moved,
    shortest_path_moves,
    where_greedy_errs,
    where_ways_part,
)


def agreement_curves(by_goal: dict) -> dict[str, tuple[np.ndarray, float]]:
    """probe name -> (agreement with the way to the cheese per record, best one-step baseline), from
    :func:`goal_curves`."""
    return {name: (goals["cheese"], baseline) for name, (goals, baseline) in by_goal.items()}


def goal_curves(log) -> dict[str, tuple[dict[str, np.ndarray], float]]:
    """probe name -> ({"cheese": agreement per record, "corner": the same towards the top-right corner}, the best of
    :func:`~trajhook.analysis.maze.baseline_agreements` towards the cheese)."""
    curves = {}
    for name in log:
        if log[name].kind != "maze":
            continue
        meta = log[name].metadata
        grid, cells, cheese = np.asarray(meta["grid"]), np.asarray(meta["cells"]), tuple(meta["cheese"])
        goals = goal_agreements(np.asarray(log[name]["direction_probs"]), grid, cells, cheese)
        baseline = max(baseline_agreements(grid, cells, cheese).values())
        curves[name] = ({goal: np.atleast_1d(a) for goal, a in goals.items()}, baseline)
    return curves


def print_baselines(log, names) -> None:
    """What policies that know only the walls score on each maze probe's level (``names``), how the field does where
    the greedy one errs, and, at the last record, where the cells whose ways to the cheese and to the corner part
    send the field's strongest move."""
    for name in names:
        meta = log[name].metadata
        grid, cells, cheese = np.asarray(meta["grid"]), np.asarray(meta["cells"]), tuple(meta["cheese"])
        probs = np.asarray(log[name]["direction_probs"])
        base = ", ".join(f"{k} {v:.3f}" for k, v in baseline_agreements(grid, cells, cheese).items())
        print(f"{name}: baselines to the cheese: {base}")
        errs = where_greedy_errs(probs, grid, cells, cheese)
        print(
            f"{name}: on the {errs['cells']} cells where the greedy move leaves the way, the strongest move is on it: "
            + ", ".join(f"{a:.2f}" for a in np.atleast_1d(errs["agreement"])[-10:])
            + " (the last 10 records)"
        )
        parts = where_ways_part(probs[-1], grid, cells, cheese)
        print(
            f"{name}: at step {int(log.steps[-1]):,}, on the cells whose ways part, the strongest move goes "
            + "; ".join(
                f"{k} ({p['cells']} cells): cheese {p['cheese']:.2f}, corner {p['corner']:.2f}"
                for k, p in parts.items()
            )
        )


def how_trained(meta: dict) -> str:
    """The first sentence of every caption: the run's reward and view, as its store declares them."""
    args = meta.get("args", {})
    reward = meta.get("reward") or ("procgen" if not (args.get("shaping") or args.get("bump_penalty")) else "shaped")
    view = meta.get("view") or ("local" if args.get("centred", True) and args.get("canvas", 64) == 64 else "full")
    rewarded = (
        "procgen's own reward alone (10 at the cheese)"
        if reward == "procgen"
        else "a dense progress reward (+0.1 a cell closer to the cheese, -0.1 away or into a wall: the shortest-path "
        "label itself) besides procgen's"
    )
    if view != "full":
        seen = "a 64x64 window centred on the mouse (about 7.5 cells each way)"
    elif not args.get("centred", True):
        seen = "the whole maze in view (procgen's frame, pooled to 32x32)"
    elif args.get("fovea", False):
        seen = "the whole maze in view through a fovea (the cells near the mouse twice as fine)"
    else:
        seen = "the whole maze in view at about a pixel per cell"
    return f"PPO trained with {rewarded}, {seen}."


def field_story(probe_log) -> dict[str, np.ndarray]:
    """Per record: which cells' strongest move is right, split by distance, and how often it runs into a wall.

    ``near``, ``middle``, ``far``: the agreement on the third of the probed cells nearest the cheese
    (BFS steps), the middle third and the farthest; ``into_wall``: the share of cells whose strongest
    move is into a wall (or off the world).

    >>> class Log(dict):
    ...     metadata = {"grid": np.array([[100, 100, 100, 2]]), "cells": np.array([[0, 0], [0, 1], [0, 2]]),
    ...                 "cheese": [0, 3]}
    >>> right, left, up = [0.1, 0.6, 0.1, 0.1, 0.1], [0.7, 0.1, 0.1, 0.05, 0.05], [0.1, 0.1, 0.7, 0.05, 0.05]
    >>> story = field_story(Log(direction_probs=np.array([[right, left, up]])))
    >>> [story[key].round(2).tolist() for key in ("near", "middle", "far", "into_wall")]
    [[0.0], [0.0], [1.0], [0.33]]
    """
    meta = probe_log.metadata
    grid, cells, cheese = np.asarray(meta["grid"]), np.asarray(meta["cells"]), tuple(meta["cheese"])
    on_path = shortest_path_moves(grid, cheese, cells)
    distance = bfs_distances(grid, cheese)[cells[:, 0], cells[:, 1]]
    rank = np.argsort(np.argsort(distance, kind="stable"), kind="stable")  # 0 = nearest
    third = np.minimum(rank * 3 // len(cells), 2)
    blocked = np.array([[moved(grid, (r, c), move) == (r, c) for move in range(len(MOVES))] for r, c in cells])
    strongest = np.asarray(probe_log["direction_probs"])[:, :, :4].argmax(axis=2)  # (records, cells)
    rows = np.arange(len(cells))
    right, into_wall = on_path[rows, strongest], blocked[rows, strongest]
    story = {name: right[:, third == i].mean(axis=1) for i, name in enumerate(("near", "middle", "far"))}
    return {"agreement": right.mean(axis=1), **story, "into_wall": into_wall.mean(axis=1)}


def default_steps(steps: np.ndarray, agreement: np.ndarray, into_wall: np.ndarray) -> list[int]:
    """The field's stages: the last record before its strongest moves stop running into walls (below
    0.25 of the cells), the first after, the first with agreement 0.7, and the last record. A run
    whose field never leaves the walls gets the first record, the first halfway to its best, the last.

    >>> steps = np.array([0, 10, 20, 30, 40])
    >>> default_steps(steps, np.array([0.2, 0.3, 0.5, 0.7, 0.8]), np.array([0.5, 0.5, 0.2, 0.1, 0.0]))
    [10, 20, 30, 40]
    >>> default_steps(steps[:4], np.array([0.2, 0.3, 0.6, 0.7]), np.full(4, 0.5))
    [0, 20, 30]
    """
    clear = np.flatnonzero(into_wall < 0.25)
    if len(clear) and clear[0] > 0:
        good = np.flatnonzero(agreement >= 0.7)
        chosen = [clear[0] - 1, clear[0], *good[:1], len(steps) - 1]
    else:
        halfway = agreement[0] + (agreement.max() - agreement[0]) / 2
        middle = int(np.argmax(agreement >= halfway)) if agreement.max() > agreement[0] else len(steps) // 2
        chosen = [0, middle, len(steps) - 1]
    return sorted({int(steps[i]) for i in chosen})


PATH_ARGS = {"out", "checkpoint", "checkpoint_every_s", "log_every", "total_timesteps", "num_iterations"}


def sessions_text(sessions: list[dict]) -> str:
    """How a resumed run's later sessions differ from its first: where each began and the arguments it changed
    (paths and logging left out), for the captions' "Trained by" line.

    >>> first = {"first_step": 0, "metadata": {"args": {"threads": 1, "ent_coef": 0.03, "out": "a.h5"}}}
    >>> later = {"first_step": 4096, "metadata": {"args": {"threads": 2, "ent_coef": 0.01, "out": "b.h5"}}}
    >>> sessions_text([first, later])
    '; resumed at env step 4,096 (--threads 2, --ent-coef 0.01)'
    >>> sessions_text([first])
    ''
    """
    parts, before = [], sessions[0]["metadata"].get("args", {}) if sessions else {}
    for session in sessions[1:]:
        now = session["metadata"].get("args", {})
        changed = [
            f"--{key.replace('_', '-')} {value}"
            for key, value in now.items()
            if key not in PATH_ARGS and before.get(key) != value
        ]
        parts.append(f"{int(session['first_step']):,}" + (f" ({', '.join(changed)})" if changed else ""))
        before = now
    return f"; resumed at env step{'s' if len(parts) > 1 else ''} {', '.join(parts)}" if parts else ""


def machine_text(machine: dict) -> str:
    return f"{machine.get('cpu') or 'unknown CPU'}, {machine.get('cores', '?')} cores (host {machine.get('node', '?')})"


def export_compact(source: str | os.PathLike, dest: str | os.PathLike) -> int:
    """Copy a closed store to ``dest`` with each chunked dataset's chunk fitted to its rows; returns the size.

    Everything else (attributes, shapes, dtypes, the ``committed`` counts) is copied as is, so
    ``trajhook.load`` reads the copy exactly as the original.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        h5py.File(source, "r").close()
    except OSError as err:
        sys.exit(
            f"--export: cannot open {source} alone ({err}); a run is still writing it. Stop the run with SIGTERM "
            "(it saves its checkpoint; the same command resumes it), export, then resume."
        )
    tmp = dest.with_name(dest.name + ".tmp")
    with h5py.File(source, "r") as src, h5py.File(tmp, "w", libver="latest") as out:
        out.attrs.update(dict(src.attrs))

        def copy(name: str, obj) -> None:
            if isinstance(obj, h5py.Group):
                out.require_group(name).attrs.update(dict(obj.attrs))
                return
            data = obj[()]
            if obj.chunks is None:
                ds = out.create_dataset(name, data=data)
            else:
                chunks = (max(1, len(data)), *obj.shape[1:])
                ds = out.create_dataset(name, data=data, maxshape=obj.maxshape, chunks=chunks)
            ds.attrs.update(dict(obj.attrs))

        src.visititems(copy)
    os.replace(tmp, dest)
    return dest.stat().st_size


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("store", type=Path, help="a store written by examples/ppo_procgen_maze.py")
    parser.add_argument("--out-dir", type=Path, default=Path("docs/images"))
    parser.add_argument("--probe", default="maze", help="the probe drawn in the vector fields and the GIF")
    parser.add_argument("--steps", type=int, nargs="+", default=None, help="vector fields at these recorded steps")
    parser.add_argument("--no-gif", action="store_true", help="skip the GIF (the slowest part)")
    parser.add_argument("--fps", type=float, default=6.0)
    parser.add_argument("--gif-frames", type=int, default=80, help="at most this many frames (see gif_records)")
    parser.add_argument("--export", type=Path, default=None, help="also copy the store here, compacted")
    args = parser.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from trajhook.analysis.field import field_trajectory_from_log
    from trajhook.plots.field import field_dynamics
    from trajhook.plots.maze import vector_field_from_log

    log = trajhook.load(args.store)
    steps = np.asarray(log.steps)
    meta = log.metadata
    by_goal = goal_curves(log)
    curves = agreement_curves(by_goal)
    if args.probe not in curves:
        sys.exit(f"{args.store} has no maze probe {args.probe!r}; its maze probes: {sorted(curves)}")
    run_command = meta.get("command", "examples/ppo_procgen_maze.py (command not recorded)")
    trained_on = machine_text(meta.get("machine", {}))
    here = machine_text(
        {"cpu": _cpu_model(), "cores": os.cpu_count(), "node": platform.node()}
    )  # where the figures are drawn
    drawn_by = f"`python docs/make_figures.py {args.store}`"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    captions = []

    print("step       " + "  ".join(f"{name:>10}" for name in curves))
    for i, step in enumerate(steps):
        print(f"{int(step):<10} " + "  ".join(f"{agreement[i]:10.2f}" for agreement, _ in curves.values()))

    print_baselines(log, by_goal)

    # the agreement curves, and how the probe's field got there
    story = field_story(log[args.probe])
    print(f"{args.probe}: step, agreement, nearest third, middle third, farthest third, strongest move into a wall")
    for i, step in enumerate(steps):
        print(f"{int(step):<10} " + "  ".join(f"{story[k][i]:.2f}" for k in story))
    fig, (ax, ax_story) = plt.subplots(1, 2, figsize=(12.8, 3.8), dpi=100)
    for name, (goals, baseline) in by_goal.items():
        cells = len(log[name].metadata["cells"])
        (line,) = ax.plot(
            steps, goals["cheese"], marker=".", label=f"{name}: level {log[name].metadata['seed']}, {cells} cells"
        )
        ax.plot(steps, goals["corner"], color=line.get_color(), ls="--", lw=1, label=f"{name}: to the corner")
        ax.axhline(baseline, color=line.get_color(), ls=":", lw=1)
    ax.set(xlabel="env steps", ylabel="strongest move on a shortest path", ylim=(0, 1.02))
    ax.set_title("to the cheese (solid), to the top-right corner (dashed), best one-step baseline (dotted)", fontsize=9)
    ax.legend(loc="upper left", fontsize=7)
    for key, label, style in (("near", "nearest", "-"), ("middle", "middle", "--"), ("far", "farthest", ":")):
        ax_story.plot(steps, story[key], ls=style, color="C0", label=f"on a shortest path: {label} third")
    ax_story.plot(steps, story["into_wall"], color="0.3", marker=".", label="into a wall")
    ax_story.set(xlabel="env steps", ylabel="share of cells' strongest moves", ylim=(0, 1.02))
    ax_story.set_title(f"{args.probe}: by distance to the cheese, and into a wall")
    ax_story.legend(loc="upper left", fontsize=8)
    for axis in (ax, ax_story):
        axis.set_xscale("symlog", linthresh=max(int(steps[1]) if len(steps) > 1 else 1, 1))
        axis.set_xlim(left=0)
    fig.tight_layout()
    fig.savefig(args.out_dir / "ppo_maze_agreement.png")
    plt.close(fig)
    agreement, _ = curves[args.probe]
    summary = ", ".join(
        f"{name} {a[0]:.2f} → {a[-1]:.2f} (best {a.max():.2f}; best one-step baseline {c:.2f})"
        for name, (a, c) in curves.items()
    )
    captions.append(
        (
            "ppo_maze_agreement.png",
            f"{how_trained(meta)} Shortest-path agreement on the held-out levels against env steps: {summary}.",
        )
    )

    # the vector field at a few steps
    chosen = args.steps or default_steps(steps, agreement, story["into_wall"])
    missing = [s for s in chosen if s not in steps.tolist()]
    if missing:
        sys.exit(f"--steps {missing} were not recorded; recorded: {steps.tolist()}")
    fig, axes = plt.subplots(1, len(chosen), figsize=(4.6 * len(chosen), 4.4), dpi=100, squeeze=False)
    for ax, step in zip(axes[0], chosen, strict=True):
        vector_field_from_log(log, step=step, probe=args.probe, ax=ax)
        ax.set_title(f"step {step:,}: agreement {agreement[steps.tolist().index(step)]:.2f}")
    fig.tight_layout()
    fig.savefig(args.out_dir / "ppo_maze_fields.png")
    plt.close(fig)
    at = ", ".join(f"{s:,} ({agreement[steps.tolist().index(s)]:.2f})" for s in chosen)
    captions.append(
        ("ppo_maze_fields.png", f"{how_trained(meta)} The {args.probe} probe's vector field at env steps {at}.")
    )

    # the essential dynamics: the field beside its PCA trajectory
    trajectory = field_trajectory_from_log(log, args.probe)
    fig = field_dynamics(log, probe=args.probe, trajectory=trajectory)
    fig.savefig(args.out_dir / "ppo_maze_dynamics.png")
    turns = ", ".join(f"{int(s):,}" for s in sorted(trajectory.turn_steps)) or "none"
    live = [(int(e.step), e.label) for e in log.events if "PCA turn" in e.label]
    live_text = ", ".join(f"{step:,}" for step, _ in live) or "none"
    ratio = trajectory.explained_variance_ratio
    print(f"field PCA: PC1 {ratio[0]:.0%}, PC2 {ratio[1]:.0%}; turns at {turns}; live stage events at {live_text}")
    captions.append(
        (
            "ppo_maze_dynamics.png",
            f"{how_trained(meta)} The {args.probe} probe's field at env step {int(steps[-1]):,} beside the PCA "
            "trajectory of its fields "
            f"(PC1 {ratio[0]:.0%}, PC2 {ratio[1]:.0%} of the variance); offline sharpest turns at env steps {turns}; "
            f"live stage events (MazeProbe(track_stages=True), on the writer thread) at {live_text}.",
        )
    )

    if not args.no_gif:
        shown = gif_records(len(steps), args.gif_frames)
        write_dynamics_gif(log, args.out_dir / "ppo_maze_training.gif", args.probe, args.fps, trajectory, shown)
        which = f"all {len(steps)} recorded steps" if len(shown) == len(steps) else gif_records_text(shown, steps)
        captions.append(
            (
                "ppo_maze_training.gif",
                f"{how_trained(meta)} The {args.probe} probe's field and its PCA trajectory at {which}.",
            )
        )

    source = f"Trained by `{run_command}` on {trained_on}{sessions_text(log.sessions)}; drawn by {drawn_by} on {here}."
    text = "".join(f"**{name}**: {caption} {source}\n\n" for name, caption in captions)
    (args.out_dir / "ppo_maze_captions.md").write_text(text)
    print(text, end="")

    if args.export:
        size = export_compact(args.store, args.export)
        copy = trajhook.load(args.export)
        assert np.array_equal(copy.steps, steps) and np.array_equal(
            copy[args.probe]["direction_probs"], log[args.probe]["direction_probs"]
        )
        print(f"exported {args.export}: {size / 1e6:.2f} MB (from {args.store.stat().st_size / 1e6:.2f} MB)")


def gif_records(n: int, most: int) -> np.ndarray:
    """Which of ``n`` records a GIF of at most ``most`` frames shows: every one of the first ``most // 2`` (the
    log-spaced early records, where the field changes fastest) and the rest evenly, the last included.

    >>> gif_records(5, 8).tolist(), gif_records(12, 8).tolist()
    ([0, 1, 2, 3, 4], [0, 1, 2, 3, 4, 6, 9, 11])
    """
    if n <= most:
        return np.arange(n)
    head = most // 2
    tail = np.round(np.linspace(head, n - 1, most - head)).astype(int)
    return np.unique(np.concatenate([np.arange(head), tail]))


def gif_records_text(shown: np.ndarray, steps: np.ndarray) -> str:
    """The caption's words for a thinned GIF's frames."""
    head = int(np.argmax(np.diff(shown) > 1)) + 1  # the frames before the first skipped record
    return (
        f"{len(shown)} of its {len(steps)} records (every record to env step {int(steps[shown[head - 1]]):,}, "
        f"then {len(shown) - head} spread evenly over the other {len(steps) - head}, the last included)"
    )


def write_dynamics_gif(log, path: Path, probe: str, fps: float, trajectory=None, shown=None) -> None:
    """One frame per record shown (default: all): the field beside the PCA trajectory with that record's point
    marked."""
    import imageio.v2 as imageio
    from tqdm.auto import tqdm

    from trajhook.plots.field import field_dynamics
    from trajhook.plots.figures import figure_to_rgb

    frames = [
        figure_to_rgb(field_dynamics(log, step=int(step), probe=probe, trajectory=trajectory))
        for step in tqdm(np.asarray(log.steps)[shown if shown is not None else slice(None)], desc="GIF frames")
    ]
    imageio.mimsave(path, frames, duration=1000.0 / fps, loop=0)


def _cpu_model() -> str:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "")


if __name__ == "__main__":
    main()
