"""Replay a checkpoint series into a store: check every header, then load, probe and commit in step order.

- **Checks first.** Every checkpoint's format, step and weights' names and shapes are read (cheaply) and
  checked against the model before anything is recorded.
- **One loop** (:func:`probed`) loads each checkpoint into the model and runs the probes as the Recorder
  does (eval, ``no_grad``, RNG restored), a prefetch thread reading the next checkpoint meanwhile. It runs
  in this process (``workers=1``), in each of ``workers`` processes, or on each rank of a ``torchrun`` /
  Ray Train job.
- **One writer** (:class:`~trajhook.replay.committer.Committer`, a Recorder) commits the records in step
  order through the Recorder's writer thread, so the store is a live run's: same schema, checksums and
  resume. Records from workers wait in a reorder buffer, at most ``WINDOW`` per worker.
"""

from __future__ import annotations

import contextlib
import glob
import math
import os
import pickle
import queue
import warnings
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from trajhook import distributed
from trajhook.errors import TrajhookError
from trajhook.probes.base import Probe
from trajhook.recording.checks import check_recorder_args
from trajhook.recording.probing import attempt_at_setup, attempt_at_step, model_device, probing, start_copy_to_host
from trajhook.replay.committer import Committer
from trajhook.replay.model import build_model, load_into, load_object, model_header, prefix_for, tied_keys
from trajhook.replay.sources import (
    HF_WEIGHTS,
    SUFFIXES,
    UNREADABLE,
    Source,
    close_peeked,
    header_of,
    identify,
    sharded,
    step_in_name,
)
from trajhook.schedule import as_schedule

WINDOW = 4
"""Records a worker may have waiting for the writer (its memory bound)."""

Probes = Sequence[Probe] | Callable[[], Sequence[Probe]] | str


@dataclass(frozen=True)
class Item:
    """One checkpoint of the series: where it is, its format, its step, the key prefix its weights carry."""

    index: int
    path: Path
    source: Source
    step: int
    prefix: str = ""
    header: int | None = None  # a hash of the names and shapes checked: a file replaced since is caught at read


@dataclass
class ReplayResult:
    """What a replay did: the steps it recorded, the steps already in the store, the checkpoints it skipped."""

    path: Path
    recorded: list[int] = field(default_factory=list)
    already: list[int] = field(default_factory=list)  # committed before this replay: not replayed again
    resumed_after: int | None = None  # the store's last committed step before this replay
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (checkpoint, why) unreadable midway

    def summary(self) -> str:
        text = f"replayed {len(self.recorded)} checkpoint(s) into {self.path}"
        if self.already:
            text += f"; {len(self.already)} already in the store (steps up to {self.already[-1]})"
        if self.skipped:
            text += f"; skipped {len(self.skipped)} unreadable: " + ", ".join(p for p, _ in self.skipped)
        return text


# -- the series -----------------------------------------------------------------------------------------------


def expand(checkpoints: Any) -> list[Path]:
    """A glob, a folder (itself a checkpoint, or holding checkpoints), a path, or a list of these, as paths."""
    given = [checkpoints] if isinstance(checkpoints, str | os.PathLike) else list(checkpoints or [])
    paths: list[Path] = []
    for entry in given:
        text = os.fspath(entry)
        if glob.has_magic(text):
            found = sorted(glob.glob(text, recursive=True))
            if not found:
                raise TrajhookError(f"replay: the glob {text!r} matches nothing. HINT: check the pattern.")
            paths.extend(Path(p) for p in found)
        elif Path(text).is_dir() and not _is_checkpoint_dir(Path(text)):
            inside = sorted(p for p in Path(text).iterdir() if p.suffix in SUFFIXES or _is_checkpoint_dir(p))
            if not inside:
                raise TrajhookError(
                    f"replay: the folder {text!r} holds no checkpoints ({', '.join(SUFFIXES)} files or checkpoint "
                    "folders). HINT: point at the folder the checkpoints are in, or pass a glob."
                )
            paths.extend(inside)
        else:
            paths.append(Path(text))
    if not paths:
        raise TrajhookError("replay: no checkpoints given. HINT: pass a glob, a folder or a list of paths.")
    return paths


def _is_checkpoint_dir(path: Path) -> bool:
    names = ("trainer_state.json", "config.json", *HF_WEIGHTS)
    return path.is_dir() and (any((path / n).exists() for n in names) or sharded(path) is not None)


def inspect(paths: Sequence[Path], step: Callable[[Path], int] | None) -> list[Item]:
    """Each checkpoint's format and step, sorted by step; a TrajhookError for the first that does not fit."""
    items, by_step = [], {}
    for path in paths:
        source = identify(path)
        try:
            value = step(path) if step is not None else source.step(path)
        except TrajhookError:
            raise
        except Exception as err:
            raise TrajhookError(f"replay: reading the step of {path} failed: {type(err).__name__}: {err}.") from None
        value = value if value is not None else step_in_name(path)
        if value is None:
            raise TrajhookError(
                f"replay: {path} ({source.name}) records no step and its name holds no number. HINT: name it "
                "e.g. model_<step>.pth, or pass step=lambda path: ... (the CLI: rename the files)."
            )
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise TrajhookError(f"replay: the step of {path} is {value!r}, not an int >= 0. HINT: check step=.")
        if value in by_step:
            raise TrajhookError(
                f"replay: {by_step[value]} and {path} both hold step {value}. HINT: pass one checkpoint per step "
                "(two runs into two stores), or step= to tell them apart."
            )
        by_step[value] = path
        items.append((value, path, source))
    items.sort(key=lambda t: t[0])
    return [Item(i, path, source, value) for i, (value, path, source) in enumerate(items)]


def check_headers(items: Sequence[Item], model: torch.nn.Module) -> list[Item]:
    """Every checkpoint's weights against the model's names and shapes, before anything is recorded."""
    expected, tied, checked = model_header(model), tied_keys(model), []
    for item in items:
        try:
            header = item.source.header(item.path)
        except TrajhookError:
            raise
        except UNREADABLE as err:
            raise TrajhookError(
                f"replay: {item.path} cannot be read ({type(err).__name__}: {str(err)[:160]}). HINT: it may be "
                "truncated or still being written; remove it from the list or wait for it."
            ) from None
        prefix = prefix_for(header, expected, item.path, tied)
        checked.append(Item(item.index, item.path, item.source, item.step, prefix, header_hash(header)))
    close_peeked()
    return checked


def resolve_probes(probes: Probes) -> list[Probe]:
    """A list of probes, from the list itself, a zero-argument factory, or ``"pkg.module:make_probes"``."""
    if isinstance(probes, str):
        probes = load_object(probes, "--probes")
    if callable(probes) and not isinstance(probes, Probe):
        probes = probes()
    if isinstance(probes, Probe):
        probes = [probes]
    return list(probes) if isinstance(probes, Sequence) else probes


def prepare(model: torch.nn.Module, probes: Sequence[Probe]) -> None:
    """Hand a Stable-Baselines3 policy's MazeProbes SB3's own calls, as the live SB3 callback does."""
    if "BasePolicy" not in {c.__name__ for c in type(model).__mro__}:
        return
    from trajhook.integrations.sb3 import sb3_action_distribution, sb3_preprocess
    from trajhook.probes.maze import MazeProbe

    for probe in probes:
        if isinstance(probe, MazeProbe):
            probe.adapt(policy_fn=sb3_action_distribution, preprocess=sb3_preprocess(model))


# -- the loop every worker runs -------------------------------------------------------------------------------


def header_hash(header: dict) -> int:
    """A fingerprint of names and shapes, the same in every process (``hash`` of a str is not)."""
    return zlib.crc32(repr(sorted(header.items())).encode())


def _read(item: Item) -> Any:
    state = item.source.read(item.path)
    if item.header is not None and header_hash(header_of(state)) != item.header:
        raise ValueError("its weights changed since they were checked")
    return state


def setup_probes(model: torch.nn.Module, probes: Sequence[Probe], forward_context: Callable) -> None:
    """Set each probe up on the model's device, in the Recorder's guard."""
    device = model_device(model)
    with probing(model), forward_context():
        for probe in probes:
            attempt_at_setup(probe, lambda p=probe: p.setup(model, device))


def probed(
    model: torch.nn.Module, probes: Sequence[Probe], items: Sequence[Item], forward_context: Callable
) -> Iterator[tuple[Item, dict | None, str | None]]:
    """For each checkpoint: ``(item, records on the CPU, None)``, or ``(item, None, why)`` if it became unreadable.

    The probes run as the Recorder runs them; the next checkpoint is read on a prefetch thread meanwhile.
    """
    with ThreadPoolExecutor(1, thread_name_prefix="trajhook-prefetch") as pool:
        upcoming = pool.submit(_read, items[0]) if items else None
        for i, item in enumerate(items):
            assert upcoming is not None
            current, upcoming = upcoming, (pool.submit(_read, items[i + 1]) if i + 1 < len(items) else None)
            try:
                load_into(model, current.result(), item.prefix)
            except (TrajhookError, *UNREADABLE) as err:
                yield item, None, f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
                continue
            with probing(model), forward_context():
                record = {p.name: attempt_at_step(p, lambda p=p: p.run(model), item.step) for p in probes}
            host, event = start_copy_to_host(record)
            if event is not None:
                event.synchronize()
            yield item, host, None


# -- the public function --------------------------------------------------------------------------------------


def replay(
    checkpoints: Any,
    probes: Probes,
    path: str | os.PathLike,
    *,
    model: Any = None,
    step: Callable[[Path], int] | None = None,
    workers: int = 1,
    every_n_steps: Any = 1,
    forward_context: Callable | None = None,
    progress: bool = False,
    **recorder_kwargs: Any,
) -> ReplayResult:
    """Record ``probes`` on each checkpoint of a series into the store at ``path``, as a live run would have.

    Args:
        checkpoints: a glob, a folder, a path, or a list of these. Hugging Face ``checkpoint-N/`` folders,
            Lightning ``.ckpt``, Stable-Baselines3 ``.zip``, torch files holding a state dict (bare or under a
            key such as ``model_state_dict``), ``.safetensors``.
        probes: the probes, a zero-argument function returning them, or ``"pkg.module:make_probes"``.
        path: the store. An existing store is resumed: checkpoints at or before its last committed step are
            not replayed again (``overwrite=True`` starts over).
        model: what the weights load into (see :mod:`trajhook.replay.model`); None for a Hugging Face folder
            with ``config.json`` or an SB3 zip. A module given is loaded into: it ends with the last
            checkpoint's weights (``workers > 1``: each worker loads into its own copy).
        step: ``step(path) -> int`` for every checkpoint, instead of the step it records (HF ``global_step``,
            Lightning ``global_step``, SB3 ``num_timesteps``) or, for a torch file, the last number in its name.
        workers: processes that load and probe their share (spawned; ``model`` and ``probes`` must pickle, or
            be given as ``"pkg.module:name"``). Under ``torchrun`` or Ray Train the ranks share the series
            instead and global rank zero writes.
        every_n_steps: which checkpoints to replay, by step, as the Recorder's cadence (1: every one).
        forward_context: a context manager factory around each probe run, as for the Recorder.
        progress: a progress bar (checkpoints per second) on stderr.
        **recorder_kwargs: the Recorder's (``metadata=``, ``overwrite=``, ``wandb=``, ``tensorboard=``...).

    Returns a :class:`ReplayResult`; a checkpoint that became unreadable midway is skipped with a warning
    and listed in ``result.skipped``.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise TrajhookError(f"replay: workers={workers!r} is not an int >= 1. HINT: e.g. workers=2.")
    ranks = distributed.world_size() > 1
    if ranks and workers > 1:
        raise TrajhookError(
            f"replay: workers={workers} under torch.distributed ({distributed.world_size()} ranks): the ranks share "
            "the series already. HINT: leave workers=1, or start more ranks."
        )
    schedule = as_schedule(every_n_steps)
    forward_context = forward_context or contextlib.nullcontext
    model_spec, probes_spec = model, probes
    probe_list = resolve_probes(probes)
    check_recorder_args(path, probe_list, 1)
    items = inspect(expand(checkpoints), step)
    spec = b""
    if workers > 1:  # spawned workers rebuild both, as given now (before this process sets its probes up)
        _check_pickles(model_spec, "model", "--model pkg.module:make_model")
        _check_pickles(probes_spec, "probes", "--probes pkg.module:make_probes")
        _check_pickles(forward_context, "forward_context", "a module-level function")
        spec = pickle.dumps((model_spec, probes_spec, items[0].source, items[0].path, forward_context))
    built = build_model(model_spec, items[0].source, items[0].path)
    items = check_headers(items, built)
    items = _due(items, schedule)
    result = ReplayResult(Path(path))
    if ranks:
        return _replay_on_ranks(items, built, probe_list, path, result, forward_context, progress, recorder_kwargs)
    items = _not_committed(items, path, recorder_kwargs, result)
    if not items:
        return result
    prepare(built, probe_list)
    setup_probes(built, probe_list, forward_context)  # the schema; in-process, the probes the loop runs
    with _committer(path, probe_list, result, forward_context, recorder_kwargs) as rec:
        bar = _bar(len(items), progress)
        try:
            if workers == 1:
                for item, host, why in probed(built, probe_list, items, forward_context):
                    _commit(rec, result, item, host, why, bar)
            else:
                _replay_in_workers(rec, result, items, workers, spec, bar)
        finally:
            bar.close()
    return result


def _committer(
    path: Any, probes: list[Probe], result: ReplayResult, forward_context: Callable, recorder_kwargs: dict
) -> Committer:
    """The one writer: the Recorder's pipeline, the store marked ``source: replay``, scalars after the resume."""
    kwargs = dict(recorder_kwargs)
    metadata = {"source": "replay", **dict(kwargs.pop("metadata", None) or {})}
    through = -1 if result.resumed_after is None else result.resumed_after - 1
    return Committer(
        path, probes, metadata=metadata, forward_context=forward_context, scalars_through=through, **kwargs
    )


def _check_pickles(obj: Any, name: str, hint: str) -> None:
    try:
        pickle.dumps(obj)
    except Exception as err:
        raise TrajhookError(
            f"replay: {name}={obj!r:.60} cannot be sent to worker processes ({type(err).__name__}: {err}). "
            f"HINT: give it as a module-level function or 'pkg.module:name' ({hint}), or use workers=1."
        ) from None


def _due(items: Sequence[Item], schedule: Any) -> list[Item]:
    kept: list[Item] = []
    for item in items:
        if schedule.is_due(item.step, kept[-1].step if kept else None):
            kept.append(item)
    return kept


def _last_committed(path: Any, recorder_kwargs: dict) -> int | None:
    if recorder_kwargs.get("overwrite") or not Path(path).is_file() or Path(path).stat().st_size == 0:
        return None
    from trajhook.store import load

    steps = load(path).steps
    return int(steps[-1]) if len(steps) else None


def _not_committed(items: Sequence[Item], path: Any, recorder_kwargs: dict, result: ReplayResult) -> list[Item]:
    """The checkpoints after the store's last committed step (a resume continues after it)."""
    last = _last_committed(path, recorder_kwargs)
    if last is None:
        return list(items)
    result.already, result.resumed_after = [i.step for i in items if i.step <= last], last
    return [i for i in items if i.step > last]


def _bar(total: int, progress: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="ckpt", desc="replay", disable=not progress, dynamic_ncols=True)


def _commit(rec: Committer, result: ReplayResult, item: Item, host: dict | None, why: str | None, bar: Any) -> None:
    if host is None:
        warnings.warn(
            f"replay: skipped {item.path} (step {item.step}): it became unreadable after its header was checked "
            f"({why}). The other checkpoints are replayed; it is listed in the result.",
            stacklevel=3,
        )
        result.skipped.append((str(item.path), str(why)))
    else:
        rec.commit(item.step, host, item.source.scalars(item.path))
        result.recorded.append(item.step)
    bar.update(1)


# -- workers: processes on this machine -----------------------------------------------------------------------


def _work(worker: int, spec: bytes, items: list[Item], results: Any, credit: Any, threads: int) -> None:
    """One worker process: build the model and probes, then load, probe and send its share in step order."""
    try:
        torch.set_num_threads(threads)
        model_spec, probes_spec, source, first, forward_context = pickle.loads(spec)
        probes = resolve_probes(probes_spec)
        model = build_model(model_spec, source, first)
        prepare(model, probes)
        setup_probes(model, probes, forward_context)
        for item, host, why in probed(model, probes, items, forward_context):
            credit.acquire()  # at most WINDOW records waiting for the writer
            arrays = None if host is None else {p: {k: t.numpy() for k, t in out.items()} for p, out in host.items()}
            results.put(("item", item.index, arrays, why))
        results.put(("done", worker, None, None))
    except BaseException as err:
        text = str(err) if isinstance(err, TrajhookError) else f"{type(err).__name__}: {err}"
        results.put(("error", worker, text, None))


def _replay_in_workers(
    rec: Committer, result: ReplayResult, items: list[Item], workers: int, spec: bytes, bar: Any
) -> None:
    """Deal the series round-robin to ``workers`` spawned processes; commit their records in step order."""
    workers = min(workers, len(items))
    ctx = torch.multiprocessing.get_context("spawn")  # never fork: h5py and threads do not survive it
    results = ctx.Queue()
    credits = [ctx.Semaphore(WINDOW) for _ in range(workers)]
    threads = max(1, (os.cpu_count() or 1) // workers)
    shares = [items[w::workers] for w in range(workers)]
    procs = [
        ctx.Process(target=_work, args=(w, spec, shares[w], results, credits[w], threads), daemon=True)
        for w in range(workers)
    ]
    for proc in procs:
        proc.start()
    waiting: dict[int, tuple[Any, Any]] = {}
    done: set[int] = set()
    try:
        for position, item in enumerate(items):
            while item.index not in waiting:
                try:
                    kind, who, payload, why = results.get(timeout=1.0)
                except queue.Empty:
                    dead = [w for w, p in enumerate(procs) if w not in done and not p.is_alive()]
                    if dead:
                        raise TrajhookError(
                            f"replay: worker {dead[0]} ended (exit code {procs[dead[0]].exitcode}) before sending "
                            "its records. Everything committed before is kept. HINT: see its output above; run "
                            "again to continue after the last committed step."
                        ) from None
                    continue
                if kind == "error":
                    raise TrajhookError(f"{payload} [in replay worker {who}; committed records are kept]")
                if kind == "done":
                    done.add(who)
                else:
                    waiting[who] = (payload, why)
            payload, why = waiting.pop(item.index)
            host = None if payload is None else _tensors(payload)
            _commit(rec, result, item, host, why, bar)
            credits[position % workers].release()
    finally:
        for proc in procs:
            proc.join(timeout=0 if proc.exitcode is not None else 5)
            if proc.is_alive():
                proc.terminate()  # on an error: the others stop here (their records would not be written)
                proc.join()
        results.close()


def _tensors(arrays: dict) -> dict:
    return {p: {k: torch.from_numpy(a) for k, a in out.items()} for p, out in arrays.items()}


# -- ranks: torchrun, Ray Train ---------------------------------------------------------------------------------


def _replay_on_ranks(
    items: list[Item],
    model: torch.nn.Module,
    probes: list[Probe],
    path: Any,
    result: ReplayResult,
    forward_context: Callable,
    progress: bool,
    recorder_kwargs: dict,
) -> ReplayResult:
    """Rank ``r`` replays items ``r, r + W, ...``; each round, rank zero gathers W records (gloo) and commits them."""
    dist = torch.distributed
    group = dist.new_group(backend="gloo")
    me, world = distributed.rank(), distributed.world_size()
    rec: Committer | None = None
    error: str | None = None
    if me == 0:
        try:
            items = _not_committed(items, path, recorder_kwargs, result)
            rec = _committer(path, probes, result, forward_context, recorder_kwargs)
        except TrajhookError as err:
            error = str(err)
    shared = [error, [i.index for i in items], result.already]
    dist.broadcast_object_list(shared, src=0, group=group)  # the same series, after the resume, on every rank
    if shared[0] is not None:
        raise TrajhookError(shared[0])
    keep = set(shared[1])
    items, result.already = [i for i in items if i.index in keep], shared[2]
    prepare(model, probes)
    setup_probes(model, probes, forward_context)
    mine = probed(model, probes, items[me::world], forward_context)
    bar = _bar(len(items), progress and me == 0)
    try:
        for round_ in range(math.ceil(len(items) / world)):
            sent: Any = None
            if round_ * world + me < len(items):
                try:
                    item, host, why = next(mine)
                    sent = ("item", item.index, None if host is None else _arrays(host), why)
                except TrajhookError as err:
                    sent = ("error", me, str(err), None)
            gathered: list[Any] = [None] * world
            dist.gather_object(sent, gathered if me == 0 else None, dst=0, group=group)
            stop: list[Any] = [None]
            if me == 0:
                assert rec is not None
                try:
                    stop[0] = _commit_round(rec, result, items, gathered, bar)
                except TrajhookError as err:
                    stop[0] = str(err)
            dist.broadcast_object_list(stop, src=0, group=group)
            if stop[0] is not None:
                raise TrajhookError(stop[0])
    finally:
        mine.close()
        bar.close()
        if rec is not None:
            rec.close()
    return result


def _arrays(host: dict) -> dict:
    return {p: {k: t.numpy() for k, t in out.items()} for p, out in host.items()}


def _commit_round(rec: Committer, result: ReplayResult, items: list[Item], gathered: list, bar: Any) -> str | None:
    """Commit one round's records in rank order (= step order); an error a rank sent, as text."""
    by_index = {i.index: i for i in items}
    for rank_, sent in enumerate(gathered):
        if sent is None:
            continue
        kind, who, payload, why = sent
        if kind == "error":
            return f"{payload} [on rank {rank_}; committed records are kept]"
        _commit(rec, result, by_index[who], None if payload is None else _tensors(payload), why, bar)
    return None
