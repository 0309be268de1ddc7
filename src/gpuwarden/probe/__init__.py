"""GPU sources: where snapshots come from. One small interface (:mod:`~gpuwarden.probe.base`), the
real nvidia-smi source, NVML and a mock beside them (:mod:`~gpuwarden.probe.sources` picks one from
the settings), and :mod:`~gpuwarden.probe.shared`, which shares one probe among every reader.

This package's own module is empty on purpose: importing a parser or the interface never imports
the sources (nor what they need: subprocess, psutil, ctypes).
"""
