"""gpuwarden: a controller that loads models only onto GPUs nobody else is using."""

__version__ = "0.1.0"
