"""Live panels keep bounded state: an evenly thinned subset of the records, whatever the run length."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import trajhook.plots.prompts
from trajhook import TrajhookError
from trajhook.analysis.thinned import Thinned, thinned_indices
from trajhook.probes.base import Probe
from trajhook.sinks.panels import PromptPanels


@pytest.mark.parametrize("n", [3, 256, 257, 1_000, 4_097])
def test_thinned_keeps_every_stride_th_record_within_its_capacity(n):
    kept = Thinned(capacity=256)
    for i in range(n):
        if kept.due():
            kept.add(10 * i, np.array([i, -i]))
        else:
            kept.skip()
    expected = [i for i in range(n) if i % kept.stride == 0]  # the records whose index the stride divides
    assert kept.kept_steps().tolist() == [10 * i for i in expected] == (10 * thinned_indices(n, 256)).tolist()
    assert kept.kept_rows()[:, 0].tolist() == expected and kept.size <= 256 and (kept.stride == 1 or kept.size > 128)
    assert kept.seen == n and kept.nbytes == 256 * 8 + 256 * 2 * 4  # fixed from the first record on


def test_thinned_refuses_a_record_of_another_size_and_a_record_not_due():
    kept = Thinned(capacity=4)
    kept.add(0, np.zeros(3))
    with pytest.raises(TrajhookError, match=r"a record of 2 values after records of 3.*HINT"):
        kept.add(1, np.zeros(2))
    for step in range(1, 5):
        kept.add(step, np.zeros(3))  # the fifth record thins: stride 2
    with pytest.raises(TrajhookError, match=r"not due.*HINT: skip"):
        kept.add(5, np.zeros(3))


def test_prompt_panels_draw_a_bounded_even_subset_and_say_so(monkeypatch):
    probe = Probe("prompts")
    probe.add_output("token_loss", (2, 5), "float32")
    probe.metadata["prompt_names"] = ["a", "b"]
    panels = PromptPanels(probe, pca_every_n_records=500, max_pca_records=64)
    drawn = []

    def spy(steps, data, *args, **kwargs):
        fig = real(steps, data, *args, **kwargs)
        drawn.append((np.array(steps), np.array(data), fig))
        return fig

    real = trajhook.plots.prompts.pca_trajectory
    monkeypatch.setattr(trajhook.plots.prompts, "pca_trajectory", spy)
    rng = np.random.default_rng(0)
    records = (rng.normal(size=(3_000, 2, 5)) + np.linspace(0, 5, 3_000)[:, None, None]).astype(np.float32)
    images = {}
    for step, record in enumerate(records):
        for key, render in panels.images(step * 2, {"token_loss": record}):
            images[step] = (key, render)
    assert sorted(images) == [499, 999, 1_499, 1_999, 2_499, 2_999]  # every 500 records, as asked
    assert panels.history.nbytes == 64 * 8 + 64 * 10 * 4  # 3,000 records: 64 kept
    key, render = images[2_999]
    image = render()
    assert key == "trajhook/prompts/pca_trajectory" and image.ndim == 3 and image.dtype == np.uint8
    steps, data, fig = drawn[-1]
    kept = [*thinned_indices(3_000, 64), 2_999]  # every 64th record, and the last
    assert steps.tolist() == [2 * i for i in kept]
    np.testing.assert_array_equal(data.reshape(len(kept), 2, 5), records[kept])
    assert fig.axes[0].get_title() == "PCA trajectory (every 64th of 3,000 records, and the last)"
    early = PromptPanels(probe, pca_every_n_records=5)
    for step, record in enumerate(records[:5]):
        early.images(step, {"token_loss": record})
    early.final_images()[0][1]()
    assert drawn[-1][0].tolist() == [0, 1, 2, 3, 4] and drawn[-1][2].axes[0].get_title() == "PCA trajectory"


@pytest.mark.parametrize("capacity", [4, 16])
def test_thinned_extend_reaches_the_state_of_feeding_every_record_in_turn(capacity):
    """A reader that takes a stored run in chunks of any size, reading only the records kept, holds what a
    live panel fed every record holds: the same rows, steps, stride and count, at every chunk's end."""
    rng = np.random.default_rng(1)
    records = rng.normal(size=(300, 2, 3))
    one, many = Thinned(capacity), Thinned(capacity)
    stops = np.unique(np.r_[0, rng.integers(1, 300, size=30), 1, 2, capacity, capacity + 1, 300])
    for start, stop in itertools.pairwise(stops.tolist()):
        for i in range(start, stop):
            _ = one.add(3 * i, records[i]) if one.due() else one.skip()
        index = thinned_indices(stop, capacity, start=start)
        np.testing.assert_array_equal(one.kept_steps()[one.size - len(index) :], 3 * index)  # the new ones kept
        many.extend(stop, 3 * index, records[index])
        assert (many.seen, many.stride, many.size) == (one.seen, one.stride, one.size)
        np.testing.assert_array_equal(many.kept_steps(), one.kept_steps())
        np.testing.assert_array_equal(many.kept_rows(), one.kept_rows())
        np.testing.assert_array_equal(
            many.kept_rows(), records[many.kept_steps() // 3].reshape(-1, 6).astype(np.float32)
        )
    with pytest.raises(TrajhookError, match=r"extend\(301\) after 300 records was given 2 steps.*HINT"):
        many.extend(301, [1, 2], np.zeros((2, 6)))
