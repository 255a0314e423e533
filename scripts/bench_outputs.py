"""How fast the Outputs tab lists a big outputs folder: 10,000 small PNGs, pages 1 and 100, thumbnails.

Run ``python scripts/bench_outputs.py [--images N] [--keep DIR]``. It writes N small PNG files
(default 10,000, 1,000 per date folder, mtimes one second apart) into a temporary outputs folder
and prints the seconds for: the first listing (every folder scanned), page 1 and page 100 again
(only the folders' mtimes are read), the thumbnails of page 1 when made and when read from the
cache (the second view), and the listing after one image was added. The backend does the same
(``webui.backend.local_outputs.OutputsBrowser``). No model, no GPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PER_FOLDER = 1000
PER_PAGE = 36
OLD_NS = 1_600_000_000 * 10**9  # mtimes long past: folder scans can be trusted at once


def write_tree(root: Path, count: int) -> None:
    from PIL import Image

    from webui.outputs.writer import encode_image

    for n in range(count):
        folder = root / "txt2img-images" / f"2026-01-{1 + n // PER_FOLDER:02d}"
        if n % PER_FOLDER == 0:
            folder.mkdir(parents=True, exist_ok=True)
        data = encode_image(
            Image.new("RGB", (64, 64), (n % 256, (n // 256) % 256, 90)), f"image {n}\nSteps: 1, Seed: {n}, Size: 64x64"
        )
        path = folder / f"{n % PER_FOLDER:05d}-{n}.png"
        path.write_bytes(data)
        stamp = OLD_NS + n * 10**9
        os.utime(path, ns=(stamp, stamp))
    for folder in (root / "txt2img-images").iterdir():
        os.utime(folder, ns=(OLD_NS, OLD_NS))


def timed(label: str, fn):
    start = time.perf_counter()
    value = fn()
    print(f"{label:<48} {time.perf_counter() - start:8.4f} s")
    return value


def thumbnails(browser, page) -> int:
    hits = 0
    for entry in page.entries:
        _, path = browser.index.resolve(entry.id)
        hits += browser.thumbnails.get(path).hit
    return hits


def main(argv: list[str] | None = None) -> int:
    from webui.backend.local_outputs import OutputsBrowser

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--keep", type=Path, default=None, help="write the tree here and keep it")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        base = args.keep or Path(tmp)
        root = base / "outputs"
        start = time.perf_counter()
        write_tree(root, args.images)
        print(f"wrote {args.images} PNG files in {time.perf_counter() - start:.1f} s")
        browser = OutputsBrowser(root, base / "cache" / "thumbnails")
        first = timed("first listing, page 1 (every folder scanned)", lambda: browser.page(1, "all", "", PER_PAGE))
        timed("page 1 again (folder mtimes only)", lambda: browser.page(1, "all", "", PER_PAGE))
        last = min(100, first.pages)
        hundred = timed(f"page {last} (folder mtimes only)", lambda: browser.page(last, "all", "", PER_PAGE))
        timed("page 1, one date folder", lambda: browser.page(1, "txt2img", "2026-01-01", PER_PAGE))
        cold = timed("page 1 thumbnails, made", lambda: thumbnails(browser, first))
        warm = timed("page 1 thumbnails, second view (cache)", lambda: thumbnails(browser, first))
        timed(f"page {last} thumbnails, made", lambda: thumbnails(browser, hundred))
        extra = root / "txt2img-images" / "2026-01-01" / "99999-new.png"
        extra.write_bytes((root / "txt2img-images" / "2026-01-01" / "00000-0.png").read_bytes())
        after = timed("page 1 after one new image (one folder rescanned)", lambda: browser.page(1, "all", "", PER_PAGE))
        print(
            f"pages: {first.pages}, images: {first.total} -> {after.total}; thumbnail cache hits: "
            f"first view {cold}/{len(first.entries)}, second view {warm}/{len(first.entries)}"
        )
        ok = warm == len(first.entries) and cold == 0 and after.total == first.total + 1
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
