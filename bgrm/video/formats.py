"""The nine video outputs as rows of data: how a frame is composed, how it is encoded.

The pipeline and the writer read these rows; no format has code of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

# Editors assume BT.709 for anything HD-like; without the tags (and the matching
# matrix in the RGB->YUV step) players guess, and skin tones shift.
_BT709 = ("-colorspace", "bt709", "-color_primaries", "bt709", "-color_trc", "bt709")
_H264 = ("-c:v", "libx264", "-preset", "medium", "-crf", "18", "-pix_fmt", "yuv420p",
         *_BT709, "-movflags", "+faststart")
_YUV709 = ("scale=out_color_matrix=bt709:out_range=tv:flags=accurate_rnd+full_chroma_int,"
           "setparams=range=tv:color_primaries=bt709:color_trc=bt709:colorspace=bt709")
# One palette per frame (stats_mode=single, new=1): a global palette would make
# ffmpeg hold every frame until the end, and memory must not grow with length.
# Bayer dithering is deterministic, so a still background does not shimmer.
_GIF_PALETTE = ("split[a][b];[a]palettegen=stats_mode=single:reserve_transparent={t}[p];"
                "[b][p]paletteuse=new=1:dither=bayer:bayer_scale=3:alpha_threshold=128")


# VP9 with an alpha plane (yuva420p), which browsers play as transparent video.
# Constant quality (crf with -b:v 0); deadline good at cpu-used 4 with row
# threads is libvpx's usual speed/size middle. Alpha needs auto-alt-ref off in
# libvpx, or the alpha plane is encoded without its own reference frames.
_VP9 = ("-c:v", "libvpx-vp9", "-pix_fmt", "yuva420p", "-crf", "32", "-b:v", "0",
        "-deadline", "good", "-cpu-used", "4", "-row-mt", "1", "-auto-alt-ref", "0", *_BT709)


@dataclass(frozen=True)
class Format:
    """One output format.

    compose: cutout (RGBA subject), mattekey (white on black), color, image or
    video (the subject over that background, opaque).
    """

    name: str
    ext: str
    muxer: str
    compose: str
    alpha: bool  # frames reach the encoder as RGBA, not RGB
    filter: str
    video_args: tuple[str, ...]
    audio_args: tuple[str, ...] | None = None  # None: the format drops audio
    even_size: bool = False  # 4:2:0 chroma needs even width and height
    # A folder of numbered pictures (muxer image2) rather than one file; its
    # audio, when kept, is a WAV beside the pictures.
    sequence: bool = False


FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("mov", "mov", "mov", "cutout", alpha=True,
           filter=_YUV709 + ",format=yuva444p10le",
           video_args=("-c:v", "prores_ks", "-profile:v", "4444", "-pix_fmt", "yuva444p10le",
                       "-alpha_bits", "16", "-vendor", "apl0", *_BT709),
           # ProRes editors expect PCM beside the picture; it also avoids a lossy re-encode.
           audio_args=("-c:a", "pcm_s16le")),
    Format("mattekey", "mp4", "mp4", "mattekey", alpha=False,
           filter=_YUV709 + ",format=yuv420p", video_args=_H264, even_size=True),
    Format("gif", "gif", "gif", "cutout", alpha=True,
           filter=_GIF_PALETTE.format(t=1), video_args=("-c:v", "gif")),
    Format("video_over_image", "mp4", "mp4", "image", alpha=False,
           filter=_YUV709 + ",format=yuv420p", video_args=_H264,
           audio_args=("-c:a", "aac", "-b:a", "192k"), even_size=True),
    Format("video_over_video", "mp4", "mp4", "video", alpha=False,
           filter=_YUV709 + ",format=yuv420p", video_args=_H264,
           audio_args=("-c:a", "aac", "-b:a", "192k"), even_size=True),
    Format("gif_with_bg", "gif", "gif", "image", alpha=False,
           filter=_GIF_PALETTE.format(t=0), video_args=("-c:v", "gif")),
    Format("mp4_with_color", "mp4", "mp4", "color", alpha=False,
           filter=_YUV709 + ",format=yuv420p", video_args=_H264,
           audio_args=("-c:a", "aac", "-b:a", "192k"), even_size=True),
    Format("webm", "webm", "webm", "cutout", alpha=True,
           filter=_YUV709 + ",format=yuva420p", video_args=_VP9,
           audio_args=("-c:a", "libopus", "-b:a", "128k")),
    # RGBA PNGs as decoded, no colour conversion; zlib level 1 as for images.
    Format("png_sequence", "", "image2", "cutout", alpha=True, filter="format=rgba",
           video_args=("-c:v", "png", "-pix_fmt", "rgba", "-compression_level", "1"),
           audio_args=("-c:a", "pcm_s16le"), sequence=True),
)}
