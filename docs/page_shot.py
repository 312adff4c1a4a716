"""The README's screenshot of the page at `/` (docs/page.png): a real
`bgrm serve` on the fixture photos, in Debian's headless chromium.

    .venv/bin/python docs/page_shot.py      # needs /usr/bin/chromium (make system-deps)
"""

from __future__ import annotations

import io
import sys
import tempfile
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from live import served  # noqa: E402
from test_page import CHROMIUM, CHROMIUM_ARGS, WAIT_MS  # noqa: E402

PHOTOS = ["astronaut.png", "chelsea.png"]
VIEW = {"width": 1200, "height": 820}
MAX_BYTES = 150_000  # as the README's other pictures


def main() -> None:
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp, served(Path(tmp) / "data", key=None) as base, \
            sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport=VIEW)
        page.goto(base + "/")
        page.select_option("#model", "u2netp")  # the same picture whatever is installed
        page.set_input_files("#files", [str(ROOT / "fixtures" / n) for n in PHOTOS])
        page.click("#send")
        page.wait_for_selector("#jobs .job[data-state=finished]", timeout=WAIT_MS)
        page.evaluate("document.activeElement.blur()")
        shot = Image.open(io.BytesIO(page.screenshot())).convert("RGB")
        browser.close()
    # 256 colours: the page's own colours stay exact, the photos dither a little.
    out = ROOT / "docs" / "page.png"
    shot.quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.FLOYDSTEINBERG
                  ).save(out, optimize=True)
    size = out.stat().st_size
    print(f"docs/page.png: {size // 1000} KB")
    if size > MAX_BYTES:
        raise SystemExit(f"docs/page.png is {size} bytes, over {MAX_BYTES}")


if __name__ == "__main__":
    main()
