"""Fine-tuning one Decision Transformer: the plain-PyTorch loop (``loop``), checkpoints, the
driver that checks and prepares a run (``driver``) and the Ray Train worker (``worker``).

Called, the package trains one run from Python: ``raydt.train(spec_or_config, out=...,
optim__lr=3e-4)`` is :func:`raydt.api.train` (see its documentation). ``raydt.train`` cannot
be both this package and a function (importing a submodule rebinds the name), so the
package object is made callable; importing it stays free of torch until the call.
"""

from __future__ import annotations

import importlib
import sys
import types


class _CallablePackage(types.ModuleType):
    def __call__(self, *args, **kwargs):
        """Train one run: :func:`raydt.api.train`."""
        from raydt.api import train

        return train(*args, **kwargs)

    def __reduce__(self):
        # Pickled by name, as (cloud)pickle pickles a plain module: a function sent to Ray
        # that uses raydt.train.* carries the package, and pickle refuses unknown module types.
        return importlib.import_module, (self.__name__,)


sys.modules[__name__].__class__ = _CallablePackage
