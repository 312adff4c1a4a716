"""Every model bgrm knows by name: rembg 2.0.86's files, checksums and URLs, with
the licence and source of the weights.

File names, URLs and checksums are exactly those rembg 2.0.86 publishes in
its session classes (``rembg/sessions/*.py``) and ``rembg/matting.py``; rembg
checks some files by md5 and others by sha256, and each row keeps the kind
rembg uses (tests/test_models.py reads them back from rembg's source). The
local file name is rembg's too (``<name>.onnx``), so a folder rembg filled
works as bgrm's models directory. Sizes are approximate (``approx_mb``,
what ``bgrm models list`` shows until a file is there).

Licences are those of the weights as their authors state them, which is not
always the licence of the code beside them; "unknown" where nobody states one.
"""

from __future__ import annotations

from dataclasses import dataclass

from bgrm.models.families import FAMILIES, Family

_RELEASES = "https://github.com/danielgatis/rembg/releases/download/v0.0.0/"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    filename: str
    checksum: str  # "md5:<hex>" or "sha256:<hex>", as rembg (pooch) writes it
    approx_mb: float  # download size, for the listing and the copies-in-memory notice
    family: str | None = "u2net"  # None: not a segmentation model (ViTMatte)
    url: str | None = None  # only `bgrm models install` ever opens it
    licence: str = "unknown"
    source: str = "unknown"
    bundled: bool = False
    # Overrides of the family's normalisation, where rembg's class has its own.
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None

    @property
    def kind(self) -> str:
        return "segmentation" if self.family is not None else "matting"

    @property
    def algorithm(self) -> str:
        return self.checksum.split(":", 1)[0]

    @property
    def digest(self) -> str:
        return self.checksum.split(":", 1)[1]

    def family_row(self) -> Family:
        if self.family is None:
            raise ValueError(f"{self.name} is not a segmentation model")
        return FAMILIES[self.family]

    def normalisation(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        family = self.family_row()
        return self.mean or family.mean, self.std or family.std


_U2NET_SRC = "https://github.com/xuebinqin/U-2-Net"
_U2NET_LICENCE = ("Apache-2.0 (U-2-Net's licence; rembg's ONNX export states none of "
                  "its own, rembg#837)")
_BIREFNET_SRC = "https://github.com/ZhengPeng7/BiRefNet"
_BIREFNET_LICENCE = ("MIT (code and weights, per the author in BiRefNet#316; some "
                     "training sets restrict commercial use, BiRefNet#306)")
_VITMATTE_SRC = "https://github.com/hustvl/ViTMatte"


def _birefnet(name: str, file: str, md5: str, mb: float) -> ModelSpec:
    return ModelSpec(name, f"{name}.onnx", f"md5:{md5}", mb, "birefnet", _RELEASES + file,
                     _BIREFNET_LICENCE, _BIREFNET_SRC)


def _vitmatte(variant: str, sha256: str, mb: float) -> ModelSpec:
    name = f"vitmatte-{variant}"
    return ModelSpec(name, f"{name}.onnx", f"sha256:{sha256}", mb, None,
                     _RELEASES + f"{name}.onnx", "MIT (ViTMatte's licence)", _VITMATTE_SRC)


REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        # -- U^2-Net family, 320 x 320 --
        ModelSpec("u2net", "u2net.onnx", "md5:60024c5c889badc19c04ad937298a77b", 176.0,
                  url=_RELEASES + "u2net.onnx", licence=_U2NET_LICENCE, source=_U2NET_SRC),
        ModelSpec("u2net_human_seg", "u2net_human_seg.onnx",
                  "md5:c09ddc2e0104f800e3e1bb4652583d1f", 176.0,
                  url=_RELEASES + "u2net_human_seg.onnx", licence=_U2NET_LICENCE,
                  source=_U2NET_SRC),
        ModelSpec("u2netp", "u2netp.onnx", "md5:8e83ca70e441ab06c318d82300c84806", 4.6,
                  url=_RELEASES + "u2netp.onnx", licence=_U2NET_LICENCE, source=_U2NET_SRC,
                  bundled=True),
        ModelSpec("silueta", "silueta.onnx", "md5:55e59e0d8062d2f5d013f4725ee84782", 43.0,
                  url=_RELEASES + "silueta.onnx",
                  licence="unknown (U^2-Net reduced by its poster, who states no licence)",
                  source="https://github.com/xuebinqin/U-2-Net/issues/295"),
        # -- IS-Net family, 1024 x 1024 --
        ModelSpec("isnet-general-use", "isnet-general-use.onnx",
                  "md5:fc16ebd8b0c10d971d3513d564d01e29", 179.0, "isnet",
                  _RELEASES + "isnet-general-use.onnx",
                  "unknown (DIS's Apache-2.0 covers its code; the weights state none, and "
                  "its DIS5K training set is non-commercial, DIS#150)",
                  "https://github.com/xuebinqin/DIS"),
        ModelSpec("isnet-anime", "isnet-anime.onnx", "md5:6f184e756bb3bd901c8849220a83e38e",
                  176.0, "isnet", _RELEASES + "isnet-anime.onnx",
                  "Apache-2.0 (anime-segmentation's licence)",
                  "https://github.com/SkyTNT/anime-segmentation",
                  mean=(0.485, 0.456, 0.406)),  # rembg's dis_anime.py; std stays 1
        # -- BiRefNet family, 1024 x 1024 --
        _birefnet("birefnet-general", "BiRefNet-general-epoch_244.onnx",
                  "7a35a0141cbbc80de11d9c9a28f52697", 973.0),
        _birefnet("birefnet-general-lite", "BiRefNet-general-bb_swin_v1_tiny-epoch_232.onnx",
                  "4fab47adc4ff364be1713e97b7e66334", 224.0),
        _birefnet("birefnet-portrait", "BiRefNet-portrait-epoch_150.onnx",
                  "c3a64a6abf20250d090cd055f12a3b67", 973.0),
        _birefnet("birefnet-dis", "BiRefNet-DIS-epoch_590.onnx",
                  "2d4d44102b446f33a4ebb2e56c051f2b", 973.0),
        _birefnet("birefnet-hrsod", "BiRefNet-HRSOD_DHU-epoch_115.onnx",
                  "c017ade5de8a50ff0fd74d790d268dda", 973.0),
        _birefnet("birefnet-cod", "BiRefNet-COD-epoch_125.onnx",
                  "f6d0d21ca89d287f17e7afe9f5fd3b45", 973.0),
        _birefnet("birefnet-massive", "BiRefNet-massive-TR_DIS5K_TR_TEs-epoch_420.onnx",
                  "33e726a2136a3d59eb0fdf613e31e3e9", 973.0),
        # -- BRIA RMBG-2.0, 1024 x 1024 (rembg's default) --
        ModelSpec("bria-rmbg", "bria-rmbg.onnx",
                  "sha256:5b486f08200f513f460da46dd701db5fbb47d79b4be4b708a19444bcd4e79958",
                  1020.0, "bria", _RELEASES + "bria-rmbg-2.0.onnx",
                  "CC BY-NC 4.0: non-commercial use only; commercial use needs an "
                  "agreement with BRIA AI",
                  "https://huggingface.co/briaai/RMBG-2.0"),
        # -- ViTMatte edge refiners (rembg/matting.py): not for --model --
        _vitmatte("small-distinctions-646",
                  "d232841ac9d9657df3e62f6c92ed425ee25df18d337245cd8b903fc1ba183631", 110.0),
        _vitmatte("small-composition-1k",
                  "659b9bb2870f80cffbe20dae4c7f18417fbdf68c0195861d24e9082c28373a24", 110.0),
        _vitmatte("base-distinctions-646",
                  "d30190833269c1bec3e37319fe67af151028d3be32f6f60f6663a51b209cc8c1", 380.0),
        _vitmatte("base-composition-1k",
                  "87bb10979f816061497ba6867b338c65a05cebd7d1507f6dde92a86382dec1f2", 380.0),
    )
}
SEGMENTATION_MODELS = tuple(n for n, s in REGISTRY.items() if s.family is not None)
# --vitmatte-model's choices: the ViTMatte rows' names without "vitmatte-".
VITMATTE_VARIANTS = tuple(n.removeprefix("vitmatte-") for n, s in REGISTRY.items()
                          if s.family is None)
VITMATTE_DEFAULT = "small-distinctions-646"  # rembg's default variant
DEFAULT_MODEL = "u2net"
FALLBACK_MODEL = "u2netp"
