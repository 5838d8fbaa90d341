import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
FIXTURES = os.path.join(ROOT, "tests", "data", "hf")
LETHE = os.environ.get("LETHE_BIN", os.path.join(ROOT, "build", "bin", "lethe"))
