"""Typed configuration of the TruFor model and of its bounded-memory evaluation."""
from __future__ import annotations

from dataclasses import dataclass

# Torch-free facts, declared here so that code which only reads results (query, top) never imports torch.
POOLED_FEATURE_NAMES = (
    "conf_softmin", "conf_softmax", "conf_mean", "conf_msq",
    "anom_softmin", "anom_softmax", "anom_mean", "anom_msq",
)
# Pillow decoders we allow; everything else is refused before any decoder runs. HEIF (phones' HEIC)
# is pillow-heif's opener, registered by ``trufor_core.image`` in every process that decodes.
ALLOWED_FORMATS = ("JPEG", "MPO", "PNG", "TIFF", "BMP", "WEBP", "GIF", "HEIF")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".tif", ".tiff", ".bmp", ".webp", ".gif",
                    ".heic", ".heif", ".hif")
# Measured on the bounded-memory path (2 vCPUs, AVX-512; BENCHMARKS.md "Huge images"): 47 s and 1.7 GiB
# at 3 MP, 116 s / 2.1 GiB at 6 MP, 355 s / 3.0 GiB at 12 MP. Time grows with the square of the
# pixels (stage 1's attention), memory linearly: the fit gives ~78 min and ~8.5 GiB at 50 MP, ~5 h and
# ~16 GiB at 100 MP. 50 MP admits every camera original short of medium format and keeps one image
# of the worst case within an hour or two of 2 CPUs; anything larger is an error row, never resized.
DEFAULT_MAX_PIXELS = 50_000_000
# Decompression bombs: an image over BOMB_MIN_PIXELS must come from at least one byte of file per
# MAX_PIXELS_PER_BYTE pixels, or it is refused from its header, before any pixel is decoded. Photographs
# are 2-20 pixels per byte (JPEG) and under 2 (PNG); flat graphics a few hundred at most; a bomb
# thousands (a 86 KB PNG that decodes to 88 MP: 1,023).
BOMB_MIN_PIXELS = 16_000_000
# An image whose forward runs longer than this gets progress lines (then as often again) and a line of
# its own when it ends.
SLOW_IMAGE_S = 60.0
MAX_PIXELS_PER_BYTE = 500


# The official numerics: test_docker (inference, the default) and train_test (conf-head BN eps 1e-3).
VARIANTS = ("test_docker", "train_test")


@dataclass(frozen=True)
class TruForConfig:
    """Architecture of TruFor (official values are the defaults: MiT-B2, MLP decoder 512).

    The tiny variants used by the fast tests only change sizes, never the structure.
    """

    embed_dims: tuple[int, ...] = (64, 128, 320, 512)
    depths: tuple[int, ...] = (3, 4, 6, 3)
    num_heads: tuple[int, ...] = (1, 2, 5, 8)
    sr_ratios: tuple[int, ...] = (8, 4, 2, 1)
    mlp_ratio: int = 4
    decoder_embed_dim: int = 512
    dncnn_depth: int = 17
    dncnn_features: int = 64
    # test_docker sets eps 1e-3 on the localisation head's fuse BN only; TruFor_train_test also on
    # the confidence head ("alt" variant of the parity fixtures).
    loc_head_bn_eps: float = 1e-3
    conf_head_bn_eps: float = 1e-5

    @classmethod
    def official(cls, variant: str = "test_docker") -> "TruForConfig":
        """The official architecture; variant "train_test" uses BN eps 1e-3 on both heads."""
        if variant == "test_docker":
            return cls()
        if variant == "train_test":
            return cls(conf_head_bn_eps=1e-3)
        raise ValueError(f"unknown TruFor variant {variant!r}; expected one of {VARIANTS}")

    @classmethod
    def tiny(cls) -> "TruForConfig":
        """A small model with the official structure, for fast tests."""
        return cls(
            embed_dims=(16, 32, 48, 64),
            depths=(1, 1, 1, 1),
            num_heads=(1, 1, 1, 1),
            sr_ratios=(8, 4, 2, 1),
            decoder_embed_dim=32,
            dncnn_depth=5,
            dncnn_features=8,
        )

    def __post_init__(self) -> None:
        n = len(self.embed_dims)
        lens = {k: len(getattr(self, k)) for k in ("depths", "num_heads", "sr_ratios")}
        if n != 4 or any(v != 4 for v in lens.values()):
            raise ValueError(f"TruFor needs 4 stages; got embed_dims={self.embed_dims}, {lens}")
        for d, h in zip(self.embed_dims, self.num_heads):
            if d % h:
                raise ValueError(f"embed dim {d} is not divisible by its {h} heads")


@dataclass(frozen=True)
class EvalConfig:
    """How the forward pass is evaluated; none of these change the result beyond float rounding.

    Every limit is a number of float32 elements a single temporary may hold, so memory stays
    bounded whatever the image size; ``None`` turns that chunking off (the official behaviour).
    """

    # "sdpa": torch's fused scaled_dot_product_attention; "math": softmax(q k^T) v as the official
    # code writes it.
    attention: str = "sdpa"
    # Max elements of one attention score block (queries x keys x heads).
    attn_block_elems: int | None = 64 * 2**20
    # Max elements of one MixFFN hidden band (rows x width x hidden channels).
    mlp_block_elems: int | None = 64 * 2**20
    # DnCNN tile side in pixels (a tile is evaluated with a 17-pixel halo, so it is exact).
    dncnn_tile: int | None = 512
    # Max elements of one decoder band (rows x width x 4*embed channels at 1/4 resolution).
    decoder_block_elems: int | None = 64 * 2**20

    def __post_init__(self) -> None:
        if self.attention not in ("sdpa", "math"):
            raise ValueError(f"attention must be 'sdpa' or 'math', got {self.attention!r}")
        for name in ("attn_block_elems", "mlp_block_elems", "dncnn_tile", "decoder_block_elems"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name} must be a positive integer or None, got {v!r}")

    @classmethod
    def naive(cls) -> "EvalConfig":
        """The official whole-image evaluation: no chunking or tiling, plain attention."""
        return cls(attention="math", attn_block_elems=None, mlp_block_elems=None,
                   dncnn_tile=None, decoder_block_elems=None)
