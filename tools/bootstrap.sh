#!/usr/bin/env bash
# Idempotent set-up for `make demo` / `make test` on a fresh machine:
#   1. Debian packages for a virtual screen (Xvfb + the xcb libraries Qt needs), when missing;
#   2. .venv with the pinned dependency set, reinstalled only when the spec changes
#      (a stamp keyed on the hash of setup.cfg + the constraints file).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
APT_PACKAGES="xvfb xauth libgl1 libegl1 libxkbcommon-x11-0 libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 libxcb-image0 libxcb-render-util0 libxcb-shape0 libxcb-randr0 libxcb-xfixes0 libdbus-1-3 libfontconfig1"

missing=()
for pkg in $APT_PACKAGES; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = "0" ]; then
        echo "[bootstrap] installing Debian packages for a virtual screen: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "[bootstrap] not root: skipping apt-get install of ${missing[*]} (install them yourself for GUI tests / the demo screenshot)"
    fi
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "[bootstrap] creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi

spec_hash=$(cat setup.cfg pyproject.toml requirements/constraints.txt tools/bootstrap.sh | sha256sum | cut -c1-16)
stamp="$VENV/.installed-$spec_hash"
if [ ! -f "$stamp" ]; then
    echo "[bootstrap] installing dependencies into $VENV (first run: a few minutes)"
    start=$(date +%s)
    # torch/torchvision: the matched pair from PyPI (see ../shared/ENVIRONMENT.md, trap 1).
    "$VENV/bin/pip" install -q --disable-pip-version-check \
        -c requirements/constraints.txt "torch==2.14.1" "torchvision==0.29.1" -e ".[testing,dev,bioimageio]"
    # The Qt binding is PyQt6 (napari 0.9 deprecates PyQt5). A venv made before the switch still
    # holds PyQt5, and with both installed qtpy (napari) picks PyQt5 while pytest-qt picks PyQt6:
    # two Qt runtimes in one process. Remove PyQt5 so an old venv tests what a fresh one does.
    if "$VENV/bin/python" -c "import importlib.util as u, sys; sys.exit(u.find_spec('PyQt5') is None)"; then
        echo "[bootstrap] removing PyQt5 from $VENV (the GUI runs on PyQt6)"
        "$VENV/bin/pip" uninstall -q -y --disable-pip-version-check PyQt5 PyQt5-Qt5 PyQt5_sip
    fi
    rm -f "$VENV"/.installed-*
    touch "$stamp"
    echo "[bootstrap] dependencies installed in $(( $(date +%s) - start )) s"
fi
