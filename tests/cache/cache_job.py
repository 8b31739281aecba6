"""Every cache scenario on the mpi executor, inside one MPI job (rank 0 runs this file).

Prints one line per scenario that passed; any failure ends the job with a traceback.
"""

import sys
import tempfile
from pathlib import Path

from cache_scenarios import SCENARIOS, Pipeline

if __name__ == "__main__":
    wanted = sys.argv[1:]
    for scenario in SCENARIOS:
        if wanted and scenario.__name__ not in wanted:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            scenario(Pipeline(Path(tmp), "mpi", {}))
        print("passed", scenario.__name__, flush=True)
