"""Real photographs that ship with installed packages (scikit-image's ``skimage/data``).

Used by the export parity gate and the fidelity checks when the user gives no images of their own.
Located by path so that scikit-image is not imported (it is slow to import).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from cbir.errors import CbirError

PHOTOS = (
    "astronaut.png",
    "coffee.png",
    "chelsea.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "hubble_deep_field.jpg",
    "retina.jpg",
    "camera.png",
    "coins.png",
    "moon.png",
    "ihc.png",
    "color.png",
    "brick.png",
    "grass.png",
    "gravel.png",
)


def sample_photos() -> list[Path]:
    """Paths of scikit-image's bundled photos (colour and grey). Raises if scikit-image is absent."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise CbirError("no sample photos: install scikit-image (pip install 'cbir[export]') or pass --images")
    data = Path(list(spec.submodule_search_locations)[0]) / "data"
    found = [data / name for name in PHOTOS if (data / name).is_file()]
    if not found:
        raise CbirError(f"no sample photos found in {data}")
    return found
