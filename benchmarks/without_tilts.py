"""Any ``cbir`` command with the second look's tilted views off (``local_features.TILTS = ()``): the
baseline of the tilted views' A/B (BENCHMARKS.md), e.g.

    python benchmarks/without_tilts.py bench copy-search --index IDX --data C --suite S --per-aug 50 --json
"""

import sys

import cbir.copies.local_features as lf
from cbir.cli import main

lf.TILTS = ()
sys.exit(main())
