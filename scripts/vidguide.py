"""sd-webui-vidguide's entry point: the scripts and callbacks the WebUI registers.

The extension root is on sys.path only while this file is imported, so the package is
imported here, at the top. Callbacks are registered here too: the WebUI clears them on
every (re)load of the scripts and re-runs this file, not the package's modules.
"""

from modules import script_callbacks

from lib_vidguide.webui import api as vidguide_api
from lib_vidguide.webui import tab as vidguide_tab
from lib_vidguide.webui import xyz as vidguide_xyz
from lib_vidguide.webui.alwayson import VidGuideFlowScript  # noqa: F401
from lib_vidguide.webui.video_script import VidGuideVideoScript  # noqa: F401

script_callbacks.on_app_started(vidguide_api.on_app_started)
script_callbacks.on_ui_tabs(vidguide_tab.on_ui_tabs)
script_callbacks.on_before_ui(vidguide_xyz.register_axes)
