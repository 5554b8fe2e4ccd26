#!/usr/bin/env bash
# Installs dependencies, builds, and runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh -DINFINI_PYTHON=ON  # the Python package and its pytest suite too
cd build
# One OpenMP thread per test process and as many processes as cores: spinning OpenMP threads
# of concurrent tests would otherwise oversubscribe the machine and slow everything down.
OMP_NUM_THREADS=1 ctest --output-on-failure -j"$(nproc)"
# The numerical suites once more with two threads each, to exercise the parallel code paths.
OMP_NUM_THREADS=2 ctest --output-on-failure -j1 -R "ModelGrad|Golden|AttentionTest|MemoryTest"
