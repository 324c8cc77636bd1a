#!/usr/bin/env bash
# Builds .whl/ (git-ignored) for experiments/device_run.sh on a GPU machine that has torch but neither
# SimpleITK nor pydicom and cannot reach PyPI: SimpleITK's wheel unpacked and xz-compressed (28 MB instead of
# the wheel's 53 MB, so it travels beside the 15 MB of prepared arrays under the 64 MiB limit), and pydicom's
# wheel as it is. The versions are the ones in this checkout's .venv. Takes about 3 minutes (xz -9e).
#   run: bash experiments/device_wheels.sh      then pass carry [".loso", ".whl"] to the device run
set -eu
versions=$(.venv/bin/python -c "import SimpleITK, pydicom; print(SimpleITK.__version__, pydicom.__version__)")
read -r sitk_version pydicom_version <<<"$versions"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
.venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$tmp" "SimpleITK==$sitk_version" "pydicom==$pydicom_version"
mkdir -p .whl "$tmp/sitk"
python3 -m zipfile -e "$tmp"/simpleitk-*.whl "$tmp/sitk"
tar -C "$tmp/sitk" -cf - . | xz -9e -T2 >.whl/sitk.tar.xz
cp "$tmp"/pydicom-*.whl .whl/
ls -l .whl
