"""Side by side: the four methods and the baselines on one model x dataset (benchmarks/suites/SUITE.yaml).

Kept so that existing command lines (and `.ci/run`) go on working: the same as `benchmarks/run.py`, whose
arguments it takes (see there and suites/_side-by-side.yaml for what the suites run).

    python benchmarks/side_by_side.py minilm-rt --out runs/side/quick --quick --no-progress
"""

from __future__ import annotations

from run import main

if __name__ == "__main__":
    main()
