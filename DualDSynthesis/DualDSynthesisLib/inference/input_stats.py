"""The input's out-of-distribution statistics for the engine, computed while the networks run on a device.

``fingerprint.volume_stats`` of a 240×240×155 T1 takes ~0.1 s of host time (percentiles, the inverse
intensity mapping, an erosion), which on a GPU is more than G and its heatmap together. Nothing the
networks do depends on it: the warnings it gives are only read at the end, and the one decision taken
before the networks (``skull="auto"``) needs only the foreground's volume (:func:`fingerprint.foreground_ml`,
one count). So with the networks on a device the statistics run in a background thread (numpy and scipy
release the GIL in these loops, and the main thread mostly waits for the device), and on the CPU, where
torch already uses every core, they run at once. The warnings are the same either way.
"""

from __future__ import annotations

import threading

import numpy as np

from ..imaging.fingerprint import TrainingFingerprint, VolumeStats, ood_warnings, volume_stats
from ..imaging.preprocess import IntensityMapping, PreparedVolume
from ..model.intensity_base import foreground_box


class InputStats:
    """:func:`fingerprint.volume_stats` of ``prepared`` (host or device slices), now or in the background."""

    def __init__(self, prepared: PreparedVolume, mapping: IntensityMapping, background: bool) -> None:
        if not isinstance(prepared.slices, np.ndarray):
            # Device slices: only the foreground's bounding box comes to the host (all that volume_stats reads),
            # copied here, in the caller's thread, before the networks queue work behind it.
            box = foreground_box(prepared.foreground)
            prepared = PreparedVolume(prepared.slices[box].cpu().numpy(), prepared.foreground[box], prepared.params,
                                      prepared.context)
        self._stats: VolumeStats | None = None
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        if background:
            self._thread = threading.Thread(target=self._compute, args=(prepared, mapping), daemon=True,
                                            name="duald-input-stats")
            self._thread.start()
        else:
            self._compute(prepared, mapping)

    def _compute(self, prepared: PreparedVolume, mapping: IntensityMapping) -> None:
        try:
            self._stats = volume_stats(prepared, mapping)
        except BaseException as exc:  # re-raised in the caller's thread by result()
            self._error = exc

    def result(self) -> VolumeStats:
        if self._thread is not None:
            self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._stats is not None
        return self._stats

    def warnings(self, fingerprint: TrainingFingerprint) -> list[str]:
        """:func:`fingerprint.ood_warnings`, each without its closing full stop (the engine's warning style)."""
        return [w.rstrip(".") for w in ood_warnings(fingerprint, self.result())]
