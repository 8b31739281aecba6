"""The helpers beside these tests (kit_runner.py) are importable by the test modules."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
