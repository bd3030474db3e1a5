"""Run every benchmark and print one JSON document: ``python -m mixai_pipeline_tests.benchmarks``."""

import json
import sys

from mixai_pipeline_tests.benchmarks import bench_features, bench_ingestion


def main() -> int:
    results = {"ingestion": bench_ingestion.run(), "features": bench_features.run()}
    json.dump(results, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
