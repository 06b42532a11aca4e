"""Installs vidrip's network guard in every Python process started with ``vidrip.netguard.guard_env``.

Python imports ``sitecustomize`` at start-up from ``PYTHONPATH``; this one does nothing unless
``VIDRIP_NETGUARD_DIR`` is set. Run nothing else here: it runs in every child process.
"""

import os

if os.environ.get("VIDRIP_NETGUARD_DIR"):
    from vidrip.netguard import install

    install(os.environ["VIDRIP_NETGUARD_DIR"])
