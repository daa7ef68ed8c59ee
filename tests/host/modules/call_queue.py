from modules.api.api import queue_lock  # one lock for UI and API, as the host passes it around

__all__ = ["queue_lock"]
