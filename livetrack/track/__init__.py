"""Online trackers (one per position) behind the ``Tracker`` seam (``base.py``).

The package is also callable: ``livetrack.track(images, ...)`` is
:func:`livetrack.api.track` (tracking a whole movie in-process from a notebook). A module
attribute cannot be both a package and a function, so the package's class gets a
``__call__`` instead.
"""

from __future__ import annotations

import sys
import types
from typing import Any


class _CallablePackage(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from livetrack.api import track

        return track(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
