"""Video fine-tuning editors on diffusers (Tune-A-Video; Motion Inversion next).

* :mod:`.sd_loading` — Stable Diffusion 1.x base models from a diffusers folder or from
  the WebUI's single-file checkpoints (``models/Stable-diffusion/*.safetensors``), offline.
* :mod:`.training` — the training loop every method shares: accelerate (mixed precision,
  several GPUs through ``accelerate launch``), gradient checkpointing, optional 8-bit Adam,
  progress, checkpoints every N steps and an exact resume.
* :mod:`.cli_support` — what the pipelines' command lines share: settings from options, Ctrl+C
  that checkpoints, the ``train`` runner and the runner of commands that write videos.
* :mod:`.tune_a_video` — Tune-A-Video: inflation of an SD 1.x UNet, training, DDIM
  inversion and editing, and the ``tune-a-video train|edit`` command line.

Nothing here is imported by ``lib_vidguide`` itself, and every module imports torch,
diffusers and transformers inside its functions: importing them costs nothing at WebUI
start-up.
"""
