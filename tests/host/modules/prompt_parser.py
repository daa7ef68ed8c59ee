"""Conditioning batches. The stand-in has one sub-prompt per image (no AND, no scheduling)."""

import torch


class MulticondLearnedConditioning:
    def __init__(self, shape, batch):
        self.shape = shape
        self.batch = batch


def get_multicond_learned_conditioning(model, prompts, steps=None):
    cond = model.get_learned_conditioning(prompts)
    return MulticondLearnedConditioning(shape=(len(prompts),), batch=cond)


def get_learned_conditioning(model, prompts, steps=None):
    return model.get_learned_conditioning(prompts)


def reconstruct_multicond_batch(c, current_step):
    conds_list = [[(i, 1.0)] for i in range(len(c.batch))]
    return conds_list, c.batch


def reconstruct_cond_batch(c, current_step):
    return c if torch.is_tensor(c) else c.batch
