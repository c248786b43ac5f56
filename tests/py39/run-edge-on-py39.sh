#!/bin/sh
# The edge services on a real Python 3.9 (JetPack 5's version), from wheels only: a Debian 11
# (bullseye, Python 3.9.2) chroot gets a wheelhouse built here the way the controller builds
# one (pip download --only-binary for cp39), installs facefleet[opencv] with --no-index, and
# runs the detector's config check (OpenCV wheel and YuNet model), the edge unit tests, and
# the detector, logger and forwarder tests against mosquitto processes of the chroot.
#
#   sudo tests/py39/run-edge-on-py39.sh        (root: mmdebstrap and chroot)
#
# Cost: the first run builds the bullseye root (mmdebstrap, under a minute and 250 MB, kept in
# $FACEFLEET_PY39_ROOT) and downloads the cp39 wheels (about 60 MB, cached by pip); later runs
# take about as long as the tests themselves. Exit status: that of the tests.
set -eu

checkout=$(cd "$(dirname "$0")/../.." && pwd)
root=${FACEFLEET_PY39_ROOT:-/var/tmp/facefleet-bullseye-py39}
shared=${FACEFLEET_SHARED:-$checkout/../shared}
python=${PYTHON:-$checkout/.venv/bin/python}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

[ "$(id -u)" = 0 ] || { echo "run as root (mmdebstrap, chroot)" >&2; exit 2; }

if [ ! -x "$root/usr/bin/python3.9" ]; then
    rm -rf "$root.tmp"
    mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,mosquitto bullseye \
        "$root.tmp" "$mirror" >/dev/null
    mv "$root.tmp" "$root"
fi

work=$root/srv/facefleet
rm -rf "$work"
mkdir -p "$work/dist" "$work/shared"
# What the role's bundle does for an x86_64 host with Python 3.9.2, plus the test tools.
"$python" -m pip wheel --quiet --no-deps --wheel-dir "$work/dist" "$checkout"
"$python" -m facefleet wheelhouse --dest "$work/wheelhouse" --arch x86_64 --python 3.9.2 \
    --constraints "$checkout/constraints.txt" "$(ls "$work"/dist/facefleet-*.whl)[opencv]" pip
# the test tools: the newest releases for 3.9 (the constraints pin ones for 3.11)
"$python" -m facefleet wheelhouse --dest "$work/testtools" --arch x86_64 --python 3.9.2 \
    --constraints /dev/null pytest pytest-timeout hypothesis >/dev/null
cp -r "$checkout/tests" "$checkout/pyproject.toml" "$work/"
if [ -d "$shared/models" ]; then
    mkdir -p "$work/shared/data"
    cp -r "$shared/models" "$work/shared/"
    cp -r "$shared/data/faces" "$work/shared/data/"
fi

mount -t proc proc "$root/proc"
mount --bind /dev "$root/dev"
trap 'umount "$root/dev" "$root/proc"' EXIT

# a clean environment: no pip settings or paths of this machine inside
env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 chroot "$root" /bin/sh -eu -c '
cd /srv/facefleet
python3 --version
# as the role installs: a virtualenv without pip, filled by the wheelhouse'"'"'s own pip
python3 -m venv --without-pip venv
pip=$(ls wheelhouse/pip-*.whl)/pip
venv/bin/python "$pip" install --quiet --no-index --find-links wheelhouse \
    --constraint wheelhouse/constraints.txt "facefleet[opencv]"
venv/bin/python "$pip" install --quiet --no-index --find-links testtools pytest pytest-timeout hypothesis
venv/bin/python -c "import cv2, sys; print(\"python\", sys.version.split()[0], \"opencv\", cv2.__version__)"
printf "[detection]\nbackend = \"yunet\"\nmodel = \"/srv/facefleet/shared/models/face_detection_yunet_2023mar.onnx\"\n" > detector.toml
venv/bin/facefleet detector --check --config detector.toml
mkdir -p /var/log/facefleet /var/lib/facefleet/forwarder
venv/bin/facefleet logger --check
venv/bin/facefleet forwarder --check
if venv/bin/facefleet processor --check 2>err; then echo "processor ran on 3.9" >&2; exit 1; fi
cat err
FACEFLEET_SHARED=/srv/facefleet/shared venv/bin/python -m pytest -q -p no:cacheprovider \
    -m "not fleet and not s3" --ignore=tests/detector/test_system_opencv.py \
    tests/unit/test_config.py tests/unit/test_contract.py tests/unit/test_spool.py \
    tests/unit/test_wire.py tests/unit/test_journal.py tests/detector tests/pipeline/test_logger.py \
    tests/pipeline/test_spool_full.py
'
