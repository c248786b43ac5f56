"""facefleet benchmarks: `python -m bench` (`make bench`) measures the pipeline against its
baselines in one run and writes `bench/results.json`, `bench/results.md` and charts."""
