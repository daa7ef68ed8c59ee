"""The WebUI adapter: the only part of lib_vidguide that imports the host's ``modules`` or gradio."""
