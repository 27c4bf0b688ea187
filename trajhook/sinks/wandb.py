"""Live Weights & Biases panels: vector fields with a step slider, logit curves, the PCA trajectory.

Every key is flat (``trajhook/<probe>/<metric>``) and declared with
``define_metric(key, step_metric="trajhook/step")`` by name before its first use; ``step=`` is
never passed to ``run.log``, so trajhook's panels live beside Lightning's and HF's own loggers
without either dropping the other's data. Figures are rendered on the sink's own thread, images
are rate-limited, and any W&B failure is warned about once and then ignored: training and the
HDF5 store never wait on W&B.
"""

from __future__ import annotations

import contextlib
import netrc
import os
import queue
import re
import threading
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlparse

import numpy as np

from trajhook.probes.base import Probe
from trajhook.sinks.base import Sink

STEP_KEY = "trajhook/step"
EVENT_KEY = "trajhook/event"


def key_part(text: str, limit: int = 40) -> str:
    """A W&B key part: no ``/``, no odd characters, not too long.

    >>> key_part(" The cat sat/on the mat!")
    'The_cat_sat_on_the_mat'
    """
    part = re.sub(r"[^A-Za-z0-9_.\-]+", "_", text).strip("_")
    return part[:limit] or "_"


def has_credentials() -> bool:
    """Whether W&B could log online: an API key in the environment or in ~/.netrc for its host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


class WandbSink(Sink):
    """Log trajhook's panels to a W&B run. Used by ``Recorder(wandb=...)``; rarely built by hand.

    Args:
        run: ``"auto"``: the active ``wandb.run``, if any. ``True``: that, or a new run (offline,
            said once, when no credentials are configured). A run object: that run.
        image_every_s: at most one image per panel this often (W&B advises few images per step).
        pca_every_n_records: how often the PCA-trajectory image of per-token losses is redrawn.
        max_queue: items waiting for W&B; past that, items are dropped with one warning.
        close_timeout_s: how long ``close`` waits for W&B before leaving it behind with a warning.
    """

    def __init__(
        self,
        run: Any = "auto",
        *,
        image_every_s: float = 5.0,
        pca_every_n_records: int = 10,
        max_queue: int = 256,
        close_timeout_s: float = 60.0,
    ) -> None:
        self.run_arg = run
        self.close_timeout_s = close_timeout_s
        self.image_every_s = image_every_s
        self.pca_every_n_records = pca_every_n_records
        self.run: Any = None
        self.started_run = False
        self._panels: list[_Panels] = []
        self._defined: set[str] = set()
        self._last_image: dict[str, float] = {}
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._thread: threading.Thread | None = None
        self._failed = False
        self._dropped = False
        self._broken_panels: set[str] = set()

    # -- Sink interface (writer thread): queue and return ----------------------------------------

    def open(self, probes: Sequence[Probe], metadata: Mapping[str, Any]) -> None:
        import wandb

        self.run = self._resolve_run(wandb)
        if self.run is None:
            return
        self._panels = [_panels_for(p, self.pca_every_n_records) for p in probes]
        self._define(STEP_KEY, hidden=True)
        self._thread = threading.Thread(target=self._work, name="trajhook-wandb", daemon=True)
        self._thread.start()

    def record(self, step: int, outputs: Mapping[str, Mapping[str, np.ndarray]]) -> None:
        self._put(("record", step, outputs))

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        self._put(("scalars", step, dict(values)))

    def event(self, step: int, label: str) -> None:
        self._put(("event", step, label))

    def close(self) -> None:
        """Let W&B finish what is queued, but never wait on a wedged W&B for longer than the timeout."""
        deadline = time.monotonic() + self.close_timeout_s
        if self._thread is not None:
            with contextlib.suppress(queue.Full):
                self._queue.put(("close", None, None), timeout=max(0.0, deadline - time.monotonic()))
            self._thread.join(max(0.0, deadline - time.monotonic()))
            if self._thread.is_alive():
                self._warn_left_behind()
                return
            self._thread = None
        if self.started_run and self.run is not None:
            finish = threading.Thread(target=self.run.finish, name="trajhook-wandb-finish", daemon=True)
            finish.start()
            finish.join(max(0.0, deadline - time.monotonic()))
            if finish.is_alive():
                self._warn_left_behind()

    def _warn_left_behind(self) -> None:
        warnings.warn(
            f"WandbSink: W&B did not finish within {self.close_timeout_s:g} s; leaving it behind. "
            "The HDF5 store is closed and complete.",
            stacklevel=3,
        )

    # -- the W&B thread -------------------------------------------------------------------------

    def _resolve_run(self, wandb: Any) -> Any:
        if self.run_arg not in ("auto", True):
            return self.run_arg
        if wandb.run is not None or self.run_arg == "auto":
            return wandb.run
        mode = os.environ.get("WANDB_MODE")
        if mode is None and not has_credentials():
            mode = "offline"
            warnings.warn(
                "WandbSink: no W&B credentials are configured, so the run logs offline to ./wandb. "
                "HINT: `wandb login`, then `wandb sync wandb/offline-run-*` uploads it.",
                stacklevel=2,
            )
        self.started_run = True
        return wandb.init(mode=mode, project=os.environ.get("WANDB_PROJECT", "trajhook"))

    def _put(self, item: tuple) -> None:
        if self.run is None or self._failed:
            return
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            if not self._dropped:
                self._dropped = True
                warnings.warn(
                    "WandbSink: W&B is falling behind; dropping panels (the HDF5 store has everything).",
                    stacklevel=2,
                )

    def _work(self) -> None:
        while True:
            kind, step, payload = self._queue.get()
            if kind == "close":
                self._flush_final()
                return
            if self._failed:
                continue
            try:
                if kind == "record":
                    self._log_record(step, payload)
                elif kind == "scalars":
                    self._log({f"trajhook/{key_part(k, 80)}": v for k, v in payload.items()}, step)
                else:
                    self._log({EVENT_KEY: payload}, step)
            except Exception as err:  # W&B down, disk full, a rendering bug: never stop training
                self._failed = True
                warnings.warn(
                    f"WandbSink: logging to W&B failed ({type(err).__name__}: {err}); W&B panels are off for "
                    "the rest of the run. Training and the HDF5 store go on.",
                    stacklevel=1,
                )

    def _log_record(self, step: int, outputs: Mapping[str, Mapping[str, np.ndarray]]) -> None:
        items: dict[str, Any] = {}
        now = time.monotonic()
        for panels in self._panels:
            record = outputs[panels.probe]
            items.update(panels.scalars(record))
            for key, render in panels.images(step, record):
                if key not in self._broken_panels and now - self._last_image.get(key, -np.inf) >= self.image_every_s:
                    self._last_image[key] = now
                    image = self._render(key, render)
                    if image is not None:
                        items[key] = image
        self._log(items, step)

    def _render(self, key: str, render: Any) -> Any:
        """One panel's image; a panel that cannot be drawn is warned about once and skipped, not fatal."""
        if key in self._broken_panels:
            return None
        try:
            return self._image(render())
        except Exception as err:
            self._broken_panels.add(key)
            warnings.warn(f"WandbSink: panel {key!r} cannot be drawn ({type(err).__name__}: {err}).", stacklevel=1)
            return None

    def _flush_final(self) -> None:
        """At close, draw the trajectory images once more so the last view holds every record."""
        if self._failed or not self._panels:
            return
        try:
            images = {key: self._render(key, r) for p in self._panels for key, r in p.final_images()}
            items = {key: image for key, image in images.items() if image is not None}
            if items:
                self._log(items, max((p.last_step for p in self._panels), default=0))
        except Exception as err:
            warnings.warn(f"WandbSink: the final panels failed ({type(err).__name__}: {err}).", stacklevel=1)

    def _image(self, rgb: np.ndarray) -> Any:
        import wandb

        return wandb.Image(rgb)

    def _log(self, items: Mapping[str, Any], step: int) -> None:
        if not items:
            return
        for key in items:
            self._define(key)
        self.run.log({**items, STEP_KEY: step})

    def _define(self, key: str, hidden: bool = False) -> None:
        if key not in self._defined:
            self._defined.add(key)
            if hidden:
                self.run.define_metric(key, hidden=True)
            else:  # by name: Lightning's and HF's "*" globs would otherwise race with ours
                self.run.define_metric(key, step_metric=STEP_KEY)


# -- what each probe shows ---------------------------------------------------------------------------


class _Panels:
    """What one probe logs: scalars every record, images (rendered lazily, rate-limited)."""

    def __init__(self, probe: Probe) -> None:
        self.probe = probe.name
        self.metadata = dict(probe.metadata)
        self.outputs = probe.outputs
        self.last_step = 0

    def scalars(self, record: Mapping[str, np.ndarray]) -> dict[str, float]:
        return {
            f"trajhook/{self.probe}/{key}": float(value)
            for key, value in record.items()
            if value.ndim == 0 and value.dtype.kind in "biuf"
        }

    def images(self, step: int, record: Mapping[str, np.ndarray]) -> list[tuple[str, Any]]:
        self.last_step = step
        return []

    def final_images(self) -> list[tuple[str, Any]]:
        return []


class _MazePanels(_Panels):
    def __init__(self, probe: Probe) -> None:
        super().__init__(probe)
        self._renderer: Any = None  # built on the W&B thread at the first image

    def images(self, step: int, record: Mapping[str, np.ndarray]) -> list[tuple[str, Any]]:
        self.last_step = step

        def render() -> np.ndarray:
            if self._renderer is None:
                from trajhook.plots.maze import VectorFieldRenderer

                m = self.metadata
                self._renderer = VectorFieldRenderer(m["grid"], m["cells"], m["cheese"], m["start"], dpi=64)
            return self._renderer.render(record["vectors"], f"{self.probe}, step {step:,}")

        return [(f"trajhook/{self.probe}/vector_field", render)]


class _PromptPanels(_Panels):
    def __init__(self, probe: Probe, pca_every_n_records: int = 10) -> None:
        super().__init__(probe)
        names = _unique([key_part(n) for n in self.metadata.get("prompt_names", [])])
        texts = self.metadata.get("target_texts", []) if "target_logprob" in self.outputs else []
        self.target_keys = [
            [f"trajhook/{self.probe}/{names[i]}/{t}" for t in _unique([key_part(t) for t in targets])]
            for i, targets in enumerate(texts)
        ]
        self.prompt_keys = names
        self.pca_every_n_records = pca_every_n_records
        self.history: list[np.ndarray] = []
        self.steps: list[int] = []

    def scalars(self, record: Mapping[str, np.ndarray]) -> dict[str, float]:
        items = super().scalars(record)
        for i, keys in enumerate(self.target_keys):
            for j, key in enumerate(keys):
                items[key] = float(record["target_logprob"][i, j])
                items[f"{key}/first_logit"] = float(record["target_first_logit"][i, j])
        if "token_loss" in record:
            for i, name in enumerate(self.prompt_keys):
                row = record["token_loss"][i]
                if np.isfinite(row).any():
                    items[f"trajhook/{self.probe}/{name}/mean_token_loss"] = float(np.nanmean(row))
        return items

    def images(self, step: int, record: Mapping[str, np.ndarray]) -> list[tuple[str, Any]]:
        self.last_step = step
        if "token_loss" not in record:
            return []
        self.history.append(np.asarray(record["token_loss"], np.float32))
        self.steps.append(step)
        if len(self.history) < 3 or len(self.history) % self.pca_every_n_records:
            return []
        return self.final_images()

    def final_images(self) -> list[tuple[str, Any]]:
        if len(self.history) < 3:
            return []
        steps, history = np.array(self.steps), np.stack(self.history)

        def render() -> np.ndarray:
            from trajhook.plots.figures import figure_to_rgb
            from trajhook.plots.prompts import pca_trajectory

            return figure_to_rgb(pca_trajectory(steps, history))

        return [(f"trajhook/{self.probe}/pca_trajectory", render)]


def _unique(parts: list[str]) -> list[str]:
    """Make key parts unique by numbering repeats: ``["a", "a"]`` becomes ``["a", "a_2"]``."""
    seen: dict[str, int] = {}
    out = []
    for part in parts:
        seen[part] = seen.get(part, 0) + 1
        out.append(part if seen[part] == 1 else f"{part}_{seen[part]}")
    return out


def _panels_for(probe: Probe, pca_every_n_records: int) -> _Panels:
    outputs = probe.outputs
    if "vectors" in outputs and {"grid", "cells"} <= probe.metadata.keys():
        return _MazePanels(probe)
    if "token_loss" in outputs or "target_logprob" in outputs:
        return _PromptPanels(probe, pca_every_n_records)
    return _Panels(probe)
