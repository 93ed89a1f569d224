"""llama-cpp-python used directly by the tests (`Llama(...)`, its server) on a machine whose AMX is faulty.

`Llama` takes no `use_extra_bufts`, so where inferencekit's probe (models/llamacpp/amx.py) finds AMX faulty,
`apply()` makes llama-cpp-python's default model parameters leave the extra buffer types off; elsewhere it
changes nothing. conftest.py applies it to the test process; `python tests/amx_safe.py ARGS` runs
`python -m llama_cpp.server ARGS` with it applied.
"""

from __future__ import annotations

import runpy
import sys


def apply() -> bool:
    """Whether the extra buffer types were turned off."""
    import llama_cpp.llama_cpp as raw  # the module `Llama` reads its defaults from

    from inferencekit.models.llamacpp.amx import decide

    if decide("auto").extra_bufts:
        return False
    defaults = raw.llama_model_default_params

    def without_extra_bufts():
        params = defaults()
        params.use_extra_bufts = False
        return params

    raw.llama_model_default_params = without_extra_bufts
    return True


if __name__ == "__main__":
    apply()
    sys.argv[0] = "llama_cpp.server"
    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
