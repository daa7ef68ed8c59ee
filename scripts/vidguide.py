"""sd-webui-vidguide's entry point: the scripts the WebUI registers.

The extension root is on sys.path only while this file is imported, so the package is
imported here, at the top.
"""

from lib_vidguide.webui.alwayson import VidGuideFlowScript  # noqa: F401
from lib_vidguide.webui.video_script import VidGuideVideoScript  # noqa: F401
