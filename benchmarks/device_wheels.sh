#!/usr/bin/env bash
# Fetch the wheels a lent GPU machine lacks (Python 3.12 there; no zarr, dask, rioxarray, rasterio, pyproj,
# lazy_loader)
# into .whl/ (git-ignored through .git/info/exclude), small enough to travel with the working tree (64 MiB
# limit together with the repository): the three largest are repacked with LZMA, which pip installs as is.
#
#   bash benchmarks/device_wheels.sh      # here, once; then carry .whl: bash benchmarks/gpu_session.sh there
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
PY=${PYTHON:-python3}
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
  zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0 dask==2026.8.0 partd==1.4.2 \
  locket==1.0.0 rioxarray==0.19.0 rasterio==1.4.4 pyproj==3.7.2 affine==3.0.1 cligj==0.7.2 \
  click-plugins==1.1.1.2 lazy_loader==0.6
"$PY" - .whl/rasterio-*.whl .whl/pyproj-*.whl .whl/numcodecs-*.whl <<'EOF'
import os
import sys
import zipfile

for path in sys.argv[1:]:
    with zipfile.ZipFile(path) as src:
        if all(i.compress_type == zipfile.ZIP_LZMA for i in src.infolist()):
            continue  # repacked on an earlier run
    tmp = path + ".tmp"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_LZMA) as dst:
        for info in src.infolist():
            zi = zipfile.ZipInfo(info.filename, date_time=info.date_time)
            zi.external_attr = info.external_attr
            zi.compress_type = zipfile.ZIP_LZMA
            dst.writestr(zi, src.read(info))
    os.replace(tmp, path)
EOF
du -sh .whl
