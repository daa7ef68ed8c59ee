"""k-diffusion's sampler code, as the WebUI puts its own k-diffusion checkout on sys.path.

The PyPI package's ``__init__`` (and ``utils``) import torchvision, which cannot be installed
here, so only the real ``sampling`` and ``external`` modules are loaded from the installed
k-diffusion wheel; ``utils`` is the one helper they use (``append_dims``).
"""

import importlib.metadata
import importlib.util
import sys

from . import utils  # noqa: F401  (registered as k_diffusion.utils before the real modules load)


def _load_real(name):
    path = importlib.metadata.distribution("k-diffusion").locate_file(f"k_diffusion/{name}.py")
    spec = importlib.util.spec_from_file_location(f"{__name__}.{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


sampling = _load_real("sampling")
external = _load_real("external")
