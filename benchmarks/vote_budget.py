"""Any ``cbir`` command with the descriptor-vote index's memory cap (``votes.MAX_MIB``) set to MIB:
the baseline of a vote-budget A/B (BENCHMARKS.md), e.g.

    python benchmarks/vote_budget.py 128 bench copy-search --index IDX --data C --suite S --json
"""

import sys

from cbir.cli import main
from cbir.copies import votes

votes.MAX_MIB = float(sys.argv.pop(1))
sys.exit(main())
