"""Run the benchmarks and print one JSON document: ``python -m mixai_pipeline_tests.benchmarks [name ...]``
(names: ingestion, features, pipeline, midi, inference, training, governance, serving; default all)."""

import json
import sys

from mixai_pipeline_tests.benchmarks import (
    bench_features,
    bench_governance,
    bench_inference,
    bench_ingestion,
    bench_midi,
    bench_pipeline,
    bench_serving,
    bench_training,
)

BENCHMARKS = {
    "ingestion": bench_ingestion.run,
    "features": bench_features.run,
    "pipeline": bench_pipeline.run,
    "midi": bench_midi.run,
    "inference": bench_inference.run,
    "training": bench_training.run,
    "governance": bench_governance.run,
    "serving": bench_serving.run,
}


def main(argv: list[str]) -> int:
    names = argv or list(BENCHMARKS)
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        print(f"unknown benchmark(s) {unknown}; known: {sorted(BENCHMARKS)}", file=sys.stderr)
        return 2
    results = {name: BENCHMARKS[name]() for name in names}
    json.dump(results, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
