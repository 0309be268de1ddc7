"""HTMX, served by gpuwarden itself (labs run offline: no CDN).

It comes from the ``django-js-lib-htmx`` registry package (0BSD, no dependencies despite its name:
htmx's own files, nothing of Django), installed with gpuwarden. It is located without importing it
(its ``__init__`` is written for Django), and nothing is copied into this repository. Server-sent
events need no htmx extension: ``static/dashboard.js`` turns them into a fragment request.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

PACKAGE = "js_lib_htmx"
VENDOR_FILES = {
    "htmx.min.js": ("htmx.min.js",),
}


class AssetMissing(RuntimeError):
    """An installed front-end file could not be found: the install is incomplete."""


def vendor_dir() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise AssetMissing("the django-js-lib-htmx package (which ships htmx) is not installed: the dashboard"
                           " cannot work without it; reinstall gpuwarden (pip install --force-reinstall gpuwarden)")
    return Path(next(iter(spec.submodule_search_locations))) / "static" / "htmx"


def vendor_file(name: str) -> Path:
    parts = VENDOR_FILES.get(name)
    if parts is None:
        raise KeyError(name)
    path = vendor_dir().joinpath(*parts)
    if not path.is_file():
        raise AssetMissing(f"{path} is missing: the dashboard cannot work without it; reinstall gpuwarden")
    return path


def check_assets() -> None:
    """At start-up: every file the dashboard needs is there (AssetMissing says which is not)."""
    for name in VENDOR_FILES:
        vendor_file(name)
