import os
import tempfile

data_path = os.environ.get("VIDGUIDE_STANDIN_DATA", os.path.join(tempfile.gettempdir(), "vidguide-standin-data"))
models_path = os.path.join(data_path, "models")
script_path = data_path
extensions_dir = os.path.join(data_path, "extensions")
