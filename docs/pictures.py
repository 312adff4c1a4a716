"""The README's pictures, made by the real `bgrm` command on the fixture photos.

    make pictures        # or: .venv/bin/python docs/pictures.py

docs/before-after.jpg: each fixture photo above its cut-out (on a checkerboard,
where the cut-out is transparent). docs/video-frame.jpg: one frame of a clip
made from the astronaut photo, as the input, and from each family of video
output: cut-out (mov), mattekey and a composite (video_over_image). Both are
JPEG at a size that keeps each file well under 150 KB. docs/edges.png: fur
edges over dark grey at 2x (PNG, so the fringe's colours are not JPEG's): the
cat composited over vivid green with the tests' known soft alpha (top) and
chelsea.png itself (bottom), cut out plain, with --decontaminate, with
--mask-feather 3, and with both.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
DOCS = ROOT / "docs"
PHOTOS = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg"]
HEIGHT = 200  # of each picture in the strips
GAP = 6
MAX_BYTES = 150_000


def bgrm(*args) -> None:
    """The installed command, with the bundled model, so anyone gets the same pictures."""
    cmd = [sys.executable, "-m", "bgrm", *map(str, args), "--model", "u2netp", "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True)
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr.decode()}")


def ffmpeg(*args) -> bytes:
    import imageio_ffmpeg

    proc = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin",
                           "-loglevel", "error", "-y", *map(str, args)], capture_output=True)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr.decode())
    return proc.stdout


def on_checkerboard(im: Image.Image, cell: int = 10) -> Image.Image:
    """An RGBA picture over the grey checkerboard editors use to show transparency."""
    w, h = im.size
    ys, xs = np.mgrid[0:h, 0:w]
    board = np.where(((xs // cell + ys // cell) % 2)[..., None] == 0, 235, 200).astype(np.uint8)
    back = Image.fromarray(np.repeat(board, 3, axis=2)).convert("RGBA")
    return Image.alpha_composite(back, im.convert("RGBA")).convert("RGB")


def scaled(im: Image.Image) -> Image.Image:
    return im.resize((round(im.width * HEIGHT / im.height), HEIGHT), Image.Resampling.LANCZOS)


def label(im: Image.Image, text: str) -> Image.Image:
    draw = ImageDraw.Draw(im)
    font = ImageFont.load_default(size=14)
    box = draw.textbbox((6, 4), text, font=font)
    draw.rectangle((box[0] - 3, box[1] - 2, box[2] + 3, box[3] + 2), fill=(0, 0, 0))
    draw.text((6, 4), text, fill=(255, 255, 255), font=font)
    return im


def grid(rows: list[list[Image.Image]]) -> Image.Image:
    width = max(sum(p.width for p in row) + GAP * (len(row) - 1) for row in rows)
    sheet = Image.new("RGB", (width, HEIGHT * len(rows) + GAP * (len(rows) - 1)), "white")
    for r, row in enumerate(rows):
        x = 0
        for pic in row:
            sheet.paste(pic, (x, r * (HEIGHT + GAP)))
            x += pic.width + GAP
    return sheet


def save(sheet: Image.Image, path: Path) -> None:
    for quality in (85, 75, 65, 55):
        sheet.save(path, quality=quality, optimize=True, progressive=True)
        if path.stat().st_size <= MAX_BYTES:
            break
    print(f"{path.relative_to(ROOT)}: {sheet.width}x{sheet.height}, "
          f"{path.stat().st_size // 1000} KB")


def photos(work: Path) -> None:
    out = work / "photos"
    bgrm("image", *(FIXTURES / p for p in PHOTOS), "-o", out)
    before = [scaled(Image.open(FIXTURES / p).convert("RGB")) for p in PHOTOS]
    after = [scaled(on_checkerboard(Image.open(out / f"{Path(p).stem}_processed.png")))
             for p in PHOTOS]
    save(grid([before, after]), DOCS / "before-after.jpg")


def video_frame(work: Path) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from videoclips import make_clip

    clip = make_clip(work / "clip.mp4", FIXTURES / "astronaut.png", size=(320, 200),
                     frames=12)
    out = work / "video"
    # One folder each: mattekey and the composite are both clip_processed.mp4.
    bgrm("video", clip, "-o", out / "cutout")
    bgrm("video", clip, "--video-format", "mattekey", "-o", out / "mattekey")
    bgrm("video", clip, "--video-format", "video_over_image", "--bg-image",
         FIXTURES / "coffee.png", "-o", out / "composite")
    index = 8

    def frame(path: Path) -> Image.Image:
        raw = ffmpeg("-i", path, "-vf", f"select=eq(n\\,{index})", "-frames:v", "1",
                     "-pix_fmt", "rgba", "-f", "rawvideo", "-")
        return Image.frombytes("RGBA", (320, 200), raw)

    pictures = [
        label(frame(clip).convert("RGB"), "input"),
        label(on_checkerboard(frame(out / "cutout" / "clip_processed.mov")), "cut-out (mov)"),
        label(frame(out / "mattekey" / "clip_processed.mp4").convert("RGB"), "mattekey"),
        label(frame(out / "composite" / "clip_processed.mp4").convert("RGB"),
              "composite (video_over_image)"),
    ]
    save(grid([[scaled(p) for p in pictures]]), DOCS / "video-frame.jpg")


def edges(work: Path) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from test_edges import known_alpha, over_green

    cat = np.asarray(Image.open(FIXTURES / "chelsea.png").convert("RGB"))
    composite = work / "cat_on_green.png"
    Image.fromarray(over_green(cat, known_alpha(*cat.shape[:2]))).save(composite)
    variants = [("plain", []), ("--decontaminate", ["--decontaminate"]),
                ("--mask-feather 3", ["--mask-feather", "3"]),
                ("--mask-feather 3 --decontaminate", ["--mask-feather", "3", "--decontaminate"])]
    rows = []
    # A stretch of fur edge in each: the composite's strands, the photo's ear.
    for src, box in ((composite, (250, 40, 370, 130)), (FIXTURES / "chelsea.png",
                                                         (330, 60, 450, 150))):
        tiles = []
        for i, (name, extra) in enumerate(variants):
            out = work / "edges" / f"{src.stem}{i}"
            bgrm("image", src, "-o", out, *extra)
            cut = Image.open(out / f"{src.stem}_processed.png")
            grey = Image.new("RGBA", cut.size, (40, 40, 40, 255))
            grey.alpha_composite(cut)
            tile = grey.convert("RGB").crop(box)
            tiles.append((name, tile.resize((tile.width * 2, tile.height * 2),
                                            Image.Resampling.NEAREST)))
        rows.append(tiles)
    tw, th = rows[0][0][1].size
    sheet = Image.new("RGB", (tw * 4 + 30, (th + 18) * 2 + 10), "white")
    draw = ImageDraw.Draw(sheet)
    for r, tiles in enumerate(rows):
        for c, (name, tile) in enumerate(tiles):
            x, y = 6 + c * (tw + 6), 4 + r * (th + 22)
            draw.text((x, y), name, fill=(0, 0, 0))
            sheet.paste(tile, (x, y + 14))
    path = DOCS / "edges.png"
    sheet.save(path, optimize=True)
    print(f"{path.relative_to(ROOT)}: {sheet.width}x{sheet.height}, "
          f"{path.stat().st_size // 1000} KB")


def main() -> None:
    DOCS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bgrm-pictures-") as tmp:
        work = Path(tmp)
        photos(work)
        video_frame(work)
        edges(work)


if __name__ == "__main__":
    main()
