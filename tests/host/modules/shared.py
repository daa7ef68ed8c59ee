"""Global host state: options, the loaded model, progress state, command-line options."""

import argparse
import os
import types

from modules import devices, standin_mode
from modules.shared_state import State


class Options:
    """The subset of shared.opts the code paths under test read."""

    def __init__(self):
        self.data = {
            "img2img_fix_steps": False,
            "img2img_extra_noise": 0.0,
            "always_discard_next_to_last_sigma": False,
            "use_old_karras_scheduler_sigmas": False,
            "sigma_min": 0.0,
            "sigma_max": 0.0,
            "rho": 0.0,
            "eta_ddim": 0.0,
            "eta_ancestral": 1.0,
            "s_min_uncond": 0.0,
            "s_churn": 0.0,
            "s_tmin": 0.0,
            "s_tmax": 0.0,
            "s_noise": 1.0,
            "skip_early_cond": 0.0,
            "s_min_uncond_all": False,
            "batch_cond_uncond": True,
            "live_preview_content": "Prompt",
            "enable_quantization": False,
            "samples_save": True,
            "save_incomplete_images": False,
            "sd_vae_encode_method": "Full",
            "sd_vae_decode_method": "Full",
            "show_progress_type": "Approx NN",
            "randn_source": "CPU",
            "initial_noise_multiplier": 1.0,
        }

    def __getattr__(self, item):
        if item == "data":
            raise AttributeError(item)
        if item in self.data:
            return self.data[item]
        raise AttributeError(f"no option {item!r}")

    def __setattr__(self, key, value):
        if key == "data":
            object.__setattr__(self, key, value)
        else:
            self.data[key] = value

    def add_option(self, key, info):
        self.data.setdefault(key, getattr(info, "default", None))


opts = Options()
state = State()
sd_model = None
device = devices.device

parser = argparse.ArgumentParser()
parser.add_argument("--api-auth", type=str, default=None)
parser.add_argument("--nowebui", action="store_true")
parser.add_argument("--skip-install", action="store_true")
parser.add_argument("--use-cpu", nargs="+", default=[], type=str.lower)  # parsed by both; Forge ignores it
if standin_mode.FORGE:
    parser.add_argument("--always-cpu", action="store_true")  # Forge's backend/args.py: the only way to CPU
# The stand-in runs on CPU: Forge only does that with --always-cpu (HOST_A1111.md §9.1).
HOST_ARGV = ["--always-cpu"] if standin_mode.FORGE else []
cmd_opts = parser.parse_args(HOST_ARGV)


def preload_extensions(extension_dirs, argv=()):
    """As the host does at start-up: every extension's preload(parser), then parse the command line."""
    global cmd_opts
    from modules import scripts

    for extension_dir in extension_dirs:
        path = os.path.join(extension_dir, "preload.py")
        if os.path.exists(path):
            scripts.load_module(path).preload(parser)
    cmd_opts = parser.parse_args(HOST_ARGV + list(argv))
    return cmd_opts


hypernetworks = {}
total_tqdm = types.SimpleNamespace(update=lambda *a, **k: None, clear=lambda: None)
