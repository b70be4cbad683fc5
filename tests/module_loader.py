"""Load another test folder's conftest (or test module) by path, for its fixture builders.

Test folders have no __init__.py, so `tests/inference/conftest.py` cannot be imported by name from
a top-level test file; each caller gives the module a name of its own so the copies never clash.
"""

from __future__ import annotations

import importlib.util



def load_module(path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
