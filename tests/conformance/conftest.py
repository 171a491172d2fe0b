"""transformers' common test mixins applied to SegRet: run by scripts/run_transformers_conformance.py, which
unpacks the tests of the installed transformers release and points SEGRET_TRANSFORMERS_TESTS at them. Without it
(the default `pytest` run) these files are not collected."""

import os

if not os.environ.get("SEGRET_TRANSFORMERS_TESTS"):
    collect_ignore_glob = ["test_*.py"]
