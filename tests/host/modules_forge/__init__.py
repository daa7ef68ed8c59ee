"""Forge's own package; its presence is how extensions tell Forge from A1111 (HOST_A1111.md §6.3).

In the stand-in it exists only in Forge mode (``VIDGUIDE_STANDIN_HOST=forge``): in A1111 mode
importing it fails, as it does on a real A1111 install.
"""

from modules import standin_mode

if not standin_mode.FORGE:
    raise ImportError("No module named 'modules_forge' (the stand-in host is in A1111 mode)")
