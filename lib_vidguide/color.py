"""Colour correction toward a reference frame, against colour drift over long videos."""

from __future__ import annotations

import numpy as np


def match_colors(image: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Histogram-match ``image`` to ``reference`` in LAB, channel by channel (RGB uint8 in and out).

    The WebUI's own img2img colour correction works the same way (LAB histogram matching),
    so results look familiar; LAB keeps lightness and colour apart, so a drifting tint is
    corrected without flattening the image's contrast.
    """
    import cv2
    from skimage.exposure import match_histograms

    if image.shape[-1] != 3 or reference.shape[-1] != 3:
        raise ValueError(f"colour correction needs RGB images, got {image.shape} and {reference.shape}")
    image_lab = cv2.cvtColor(np.ascontiguousarray(image, dtype=np.uint8), cv2.COLOR_RGB2LAB)
    reference_lab = cv2.cvtColor(np.ascontiguousarray(reference, dtype=np.uint8), cv2.COLOR_RGB2LAB)
    matched = match_histograms(image_lab, reference_lab, channel_axis=-1)
    matched = np.clip(np.round(matched), 0, 255).astype(np.uint8)
    return cv2.cvtColor(matched, cv2.COLOR_LAB2RGB)
