"""HTMX and its SSE extension, served by gpuwarden itself (labs run offline: no CDN).

They come from the ``django-htmx`` registry package, installed with gpuwarden; they are located
without importing it (it needs Django settings), and are never copied into this repository.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

VENDOR_FILES = {
    "htmx.min.js": ("htmx-2.min.js",),
    "htmx-sse.min.js": ("ext", "hx-sse-2.min.js"),
}


class AssetMissing(RuntimeError):
    """An installed front-end file could not be found: the install is incomplete."""


def vendor_dir() -> Path:
    spec = importlib.util.find_spec("django_htmx")
    if spec is None or not spec.submodule_search_locations:
        raise AssetMissing("the django-htmx package (which ships htmx) is not installed; reinstall gpuwarden")
    return Path(next(iter(spec.submodule_search_locations))) / "static" / "django_htmx"


def vendor_file(name: str) -> Path:
    parts = VENDOR_FILES.get(name)
    if parts is None:
        raise KeyError(name)
    path = vendor_dir().joinpath(*parts)
    if not path.is_file():
        raise AssetMissing(f"{path} is missing; reinstall gpuwarden")
    return path
