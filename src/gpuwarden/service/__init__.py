"""``gpuwarden service install | uninstall | status``: start gpuwarden at boot, through systemd on
Linux and Task Scheduler on Windows. :mod:`~gpuwarden.service.plan` says what (pure);
:mod:`~gpuwarden.service.system` does it."""
