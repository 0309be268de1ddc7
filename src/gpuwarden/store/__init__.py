"""The state database (see :mod:`gpuwarden.store.gateway`)."""

from gpuwarden.store.base import StoreError
from gpuwarden.store.gateway import Store, StoreTx
from gpuwarden.store.schema import SCHEMA_VERSION

STATE_DATABASE = "gpuwarden.db"  # the file's name inside state_dir

__all__ = ["SCHEMA_VERSION", "STATE_DATABASE", "Store", "StoreError", "StoreTx"]
