"""The heavy-blur copy set: the first N originals of an AugLy suite's ``blur`` edits blurred with
PIL's GaussianBlur at each radius (pixels of the original; JPEG 90), in the suite's layout
(``OUT/copies/blur_r<R>/<class>/<name>.jpg``), for ``cbir bench copy-search --suite OUT``.

    python benchmarks/blur_suite.py /work/shared/datasets/corel1k /tmp/c37/suite /tmp/c41/blur_suite 50 4 6 8
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image, ImageFilter

from cbir.sources import find_images


def main() -> None:
    data, suite, out, n = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
    radii = [float(r) for r in sys.argv[5:]] or [4.0, 6.0]
    copies = suite / "copies" / "blur"
    for f in sorted(find_images([copies]))[:n]:
        rel = f.relative_to(copies)
        original = next(data.glob(str(rel.with_suffix(".*"))))
        img = Image.open(original).convert("RGB")
        for r in radii:
            dst = out / "copies" / f"blur_r{r:g}" / rel.with_suffix(".jpg")
            dst.parent.mkdir(parents=True, exist_ok=True)
            img.filter(ImageFilter.GaussianBlur(r)).save(dst, quality=90)
    print("wrote", n, "originals at radii", radii, "under", out / "copies")


if __name__ == "__main__":
    main()
