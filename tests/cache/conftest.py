"""The scenarios (cache_scenarios.py) are importable by the test modules beside them, and by
the MPI jobs they start."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
