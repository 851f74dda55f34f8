"""ABC notation handling: decode, split into tunes, read headers, filter, cut into patches."""

from workers.abc.decode import AbcDecodeError, decode_abc_bytes
from workers.abc.filter import music_text_for_encoder
from workers.abc.header import AbcHeader, read_header
from workers.abc.patches import (
    EOP_ID,
    MASK_ID,
    PAD_ID,
    PATCH_CLASSES,
    PATCH_LENGTH,
    bar_patches,
    encode_patches,
    music_patch_count,
    patch_ids,
)
from workers.abc.piece import (
    AbcParseError,
    ParsedPiece,
    PieceError,
    parse_abc_text,
    parse_tune,
)
from workers.abc.split import RawTune, split_tunes

__all__ = [
    "EOP_ID",
    "MASK_ID",
    "PAD_ID",
    "PATCH_CLASSES",
    "PATCH_LENGTH",
    "AbcDecodeError",
    "AbcHeader",
    "AbcParseError",
    "ParsedPiece",
    "PieceError",
    "RawTune",
    "bar_patches",
    "decode_abc_bytes",
    "encode_patches",
    "music_patch_count",
    "music_text_for_encoder",
    "parse_abc_text",
    "parse_tune",
    "patch_ids",
    "read_header",
    "split_tunes",
]
