"""CLaMP: config, model, strict offline loading and the batched encoder."""

from workers.clamp.configuration_clamp import ClampConfig
from workers.clamp.encoder import ClampEncoder
from workers.clamp.loading import CheckpointError, LoadedClamp, ModelManifest, load_clamp
from workers.clamp.modeling_clamp import ClampModel, ClampMusicEncoder

__all__ = [
    "CheckpointError",
    "ClampConfig",
    "ClampEncoder",
    "ClampModel",
    "ClampMusicEncoder",
    "LoadedClamp",
    "ModelManifest",
    "load_clamp",
]
