"""What each probe shows on a live dashboard: flat scalar keys every record, images drawn lazily.

Shared by the W&B and TensorBoard sinks, so both show the same panels under the same keys:
``trajhook/<probe>/<output>`` for scalar outputs, ``trajhook/<probe>/<prompt>/target<j>_<text>``
for each target of a PromptProbe (the index keeps it unique whatever the text; the full text
is in :meth:`Panels.config` and the image captions), ``trajhook/<probe>/vector_field`` and
``trajhook/<probe>/pca_trajectory`` for images. Every key holds one scalar or one image.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from trajhook.analysis.thinned import Thinned
from trajhook.probes.base import Probe

STEP_KEY = "trajhook/step"
EVENT_KEY = "trajhook/event"
Render = Callable[[], np.ndarray]


def key_part(text: str, limit: int = 40) -> str:
    """A key part: no ``/``, no odd characters, not too long; ``""`` when nothing readable is left.

    >>> key_part(" The cat sat/on the mat!"), key_part(",")
    ('The_cat_sat_on_the_mat', '')
    """
    return re.sub(r"[^A-Za-z0-9_.\-]+", "_", text).strip("_")[:limit]


def target_key(prompt: str, index: int, text: str) -> str:
    """The key part of target ``index`` of a prompt: unique by its index, readable by its text.

    >>> target_key("capital", 0, " Paris"), target_key("punct", 1, ","), target_key("punct", 2, ";")
    ('capital/target0_Paris', 'punct/target1', 'punct/target2')
    """
    text_part = key_part(text, 24)
    return f"{prompt}/target{index}" + (f"_{text_part}" if text_part else "")


class Panels:
    """What one probe logs: its scalar outputs every record; no images."""

    accumulates = False  # whether images() keeps history (then it must see each record once)

    def __init__(self, probe: Probe) -> None:
        self.probe = probe.name
        self.metadata = dict(probe.metadata)
        self.outputs = probe.outputs

    def scalars(self, record: Mapping[str, np.ndarray]) -> dict[str, float]:
        return {
            f"trajhook/{self.probe}/{key}": float(value)
            for key, value in record.items()
            if np.ndim(value) == 0 and np.asarray(value).dtype.kind in "biuf"
        }

    def images(self, step: int, record: Mapping[str, np.ndarray]) -> list[tuple[str, Render]]:
        """``(key, render)`` pairs; ``render()`` draws the ``(H, W, 3)`` uint8 image when the sink wants it."""
        return []

    def final_images(self) -> list[tuple[str, Render]]:
        """Images that summarize the whole run, drawn once more at close."""
        return []

    def config(self) -> dict[str, Any]:
        """What the keys stand for (e.g. each target's full text), for the run's config."""
        return {}


class MazePanels(Panels):
    """The vector field, drawn by the same renderer as every other maze picture."""

    def __init__(self, probe: Probe) -> None:
        super().__init__(probe)
        self._renderer: Any = None  # built on the sink's thread at the first image

    def images(self, step: int, record: Mapping[str, np.ndarray]) -> list[tuple[str, Render]]:
        def render() -> np.ndarray:
            if self._renderer is None:
                from trajhook.plots.maze import VectorFieldRenderer

                m = self.metadata
                self._renderer = VectorFieldRenderer(m["grid"], m["cells"], m.get("cheese"), m.get("start"))
            return self._renderer.render(record["vectors"], f"{self.probe}, step {step:,}")

        return [(f"trajhook/{self.probe}/vector_field", render)]


class PromptPanels(Panels):
    """One scalar per target and per prompt's mean token loss; the PCA trajectory as an image.

    The PCA picture shows at most ``max_pca_records`` records (and the latest): every record
    until then, after that an even subset (:class:`~trajhook.analysis.thinned.Thinned`), and its
    title says so. Memory stays fixed whatever the run length.
    """

    accumulates = True

    def __init__(self, probe: Probe, pca_every_n_records: int = 10, max_pca_records: int = 256) -> None:
        super().__init__(probe)
        names = list(self.metadata.get("prompt_names", []))
        texts = self.metadata.get("target_texts", []) if "target_logprob" in self.outputs else []
        self.target_texts = {
            f"trajhook/{self.probe}/{target_key(names[i], j, text)}": text
            for i, targets in enumerate(texts)
            for j, text in enumerate(targets)
        }
        self.target_keys = [
            [f"trajhook/{self.probe}/{target_key(names[i], j, text)}" for j, text in enumerate(targets)]
            for i, targets in enumerate(texts)
        ]
        self.prompt_keys = names
        self.pca_every_n_records = pca_every_n_records
        self.history = Thinned(max_pca_records)  # the records the PCA picture shows: bounded, evenly thinned
        self._latest: tuple[int, np.ndarray] | None = None

    def config(self) -> dict[str, Any]:
        return {f"{key} text": text for key, text in self.target_texts.items()}

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

    def images(self, step: int, record: Mapping[str, np.ndarray]) -> list[tuple[str, Render]]:
        if "token_loss" not in record:
            return []
        row = np.asarray(record["token_loss"], np.float32)
        if self.history.due():
            self.history.add(step, row)
        else:
            self.history.skip()
        self._latest = (step, row)
        if self.history.seen < 3 or self.history.seen % self.pca_every_n_records:
            return []
        return self.final_images()

    def final_images(self) -> list[tuple[str, Render]]:
        if self.history.size < 3:
            return []
        steps, history = self.history.kept_steps().copy(), self.history.kept_rows().copy()
        stride, seen = self.history.stride, self.history.seen
        if self._latest is not None and self._latest[0] != steps[-1]:  # the latest record, kept or not
            steps = np.append(steps, self._latest[0])
            history = np.concatenate([history, self._latest[1].reshape(1, -1)])

        def render() -> np.ndarray:
            from trajhook.plots.figures import figure_to_rgb
            from trajhook.plots.prompts import pca_trajectory

            fig = pca_trajectory(steps, history)
            if stride > 1:
                fig.axes[0].set_title(f"PCA trajectory (every {stride}th of {seen:,} records, and the last)")
            return figure_to_rgb(fig)

        return [(f"trajhook/{self.probe}/pca_trajectory", render)]


def panels_for(probe: Probe, pca_every_n_records: int = 10) -> Panels:
    """The panels that suit a probe's ``kind``: maze vector fields, prompt curves, or plain scalars."""
    if probe.kind == "maze":
        return MazePanels(probe)
    if probe.kind in ("prompts", "token_loss"):
        return PromptPanels(probe, pca_every_n_records)
    return Panels(probe)
