"""CLaMP: config, model, strict offline loading, batched encoder and random checkpoints."""

from workers.clamp.configuration_clamp import ClampConfig
from workers.clamp.encoder import ClampEncoder
from workers.clamp.loading import CheckpointError, LoadedClamp, ModelManifest, load_clamp
from workers.clamp.modeling_clamp import ClampModel, ClampMusicEncoder
from workers.clamp.random_checkpoint import write_random_checkpoint

__all__ = [
    "CheckpointError",
    "ClampConfig",
    "ClampEncoder",
    "ClampModel",
    "ClampMusicEncoder",
    "LoadedClamp",
    "ModelManifest",
    "load_clamp",
    "write_random_checkpoint",
]
