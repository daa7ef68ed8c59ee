"""Per-seed noise. Like the host, each seed's noise re-seeds the *global* torch RNG first."""

import torch

from modules import devices


def randn(seed, shape):
    torch.manual_seed(seed)
    return torch.randn(shape, device=devices.cpu).to(devices.device)


class ImageRNG:
    def __init__(self, shape, seeds, subseeds=None, subseed_strength=0.0, seed_resize_from_h=0, seed_resize_from_w=0):
        self.shape = tuple(map(int, shape))
        self.seeds = seeds
        self.is_first = True

    def first(self):
        return torch.stack([randn(seed, self.shape) for seed in self.seeds]).to(devices.device)

    def next(self):
        if self.is_first:
            self.is_first = False
            return self.first()
        # Later draws (ancestral samplers) continue the global RNG the first draw seeded.
        return torch.stack([torch.randn(self.shape) for _ in self.seeds]).to(devices.device)
