"""The live path into a store: a training loop's one line, through the probes, to the writer thread.

- :mod:`~trajhook.recording.recorder`: the :class:`Recorder` facade, its cadence and public methods;
- :mod:`~trajhook.recording.checks`: argument and record checks (shared with the integrations and replay);
- :mod:`~trajhook.recording.probing`: the guard around a probe run, the device check, the copies off the device;
- :mod:`~trajhook.recording.nan`: the NaN policy, in one place;
- :mod:`~trajhook.recording.thread`: the writer thread that owns the store and feeds the sinks;
- :mod:`~trajhook.recording.session`: what each session notes about itself in the store.

Replay (:mod:`trajhook.replay`) ends in the same store through the same Recorder and writer thread.
"""

from trajhook.recording.recorder import Recorder

__all__ = ["Recorder"]
