"""The bundled configuration: profiles (``*.yaml``) and prompt templates (``prompts/``).

Package data, found with ``importlib.resources`` wherever the project is installed. To use your
own, point ``PROREASON_CONFIGS_DIR`` at a folder of the same shape, or pass a profile file path.
"""

from importlib import resources
from pathlib import Path


def bundled_dir() -> Path:
    """The folder holding the bundled profiles and ``prompts/``."""
    return Path(str(resources.files(__name__)))
