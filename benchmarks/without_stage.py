"""Any ``cbir`` command with one stage of the search cascade's second look left out
(``cascade.SECOND_LOOK``, by name: ``hash``, ``windows``, ``colour``): the baseline of that stage's
A/B (BENCHMARKS.md), e.g.

    python benchmarks/without_stage.py hash bench copy-search --index IDX --data C --suite S --json
"""

import sys

from cbir.cli import main
from cbir.copies import cascade

name = sys.argv.pop(1)
if name not in {s.name for s in cascade.SECOND_LOOK}:
    sys.exit(f"{name}: not a stage of the second look ({', '.join(s.name for s in cascade.SECOND_LOOK)})")
cascade.SECOND_LOOK = tuple(s for s in cascade.SECOND_LOOK if s.name != name)
sys.exit(main())
