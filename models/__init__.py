"""Model backends behind one async interface. Nothing here knows about agents or HTTP."""

from models.base import ModelBackend
from models.config import BackendConfig
from models.types import (
    GenerationRequest,
    GenerationResult,
    ImageInput,
    ImagePart,
    Message,
    SamplingParams,
    StreamDelta,
    TextPart,
    Usage,
)

__all__ = [
    "BackendConfig",
    "GenerationRequest",
    "GenerationResult",
    "ImageInput",
    "ImagePart",
    "Message",
    "ModelBackend",
    "SamplingParams",
    "StreamDelta",
    "TextPart",
    "Usage",
]
