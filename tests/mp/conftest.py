import sys
from pathlib import Path

# Task functions for these tests live in mp_tasks.py, importable by worker processes.
sys.path.insert(0, str(Path(__file__).parent))
