#!/usr/bin/env bash
# Installs the Debian 12 packages infini needs to build, test and benchmark.
set -euo pipefail
pkgs=(build-essential cmake pkg-config libopenblas-openmp-dev nlohmann-json3-dev libcli11-dev
      libpcre2-dev libicu-dev libgtest-dev libgmock-dev googletest libbenchmark-dev
      libopenmpi-dev openmpi-bin)
pkgs+=(clang libclang-rt-14-dev libomp-dev)  # scripts/fuzz.sh: libFuzzer, clang's OpenMP
pkgs+=(pybind11-dev python3-dev python3-numpy python3-pytest)  # the Python package (docs/python.md)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
