"""The benchmarks' shared harness (bench/harness.py) and their results (results.json, results.md, runs.json).
Each use case's bench.py runs it: `bash run.sh bench nss` = `python nss/bench.py`."""
