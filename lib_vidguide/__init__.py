"""sd-webui-vidguide: motion-aware video for the Stable Diffusion WebUI.

This package is host-independent: only ``lib_vidguide.webui`` may import the
WebUI's ``modules`` or ``gradio``. Heavy third-party libraries (torch, OpenCV,
PyAV, diffusers) are imported inside the functions that need them, so that
importing the package costs nothing at WebUI start-up.
"""

__version__ = "0.1.0"
