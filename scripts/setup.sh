#!/usr/bin/env bash
# Creates .venv and installs apclip with the CPU extras every command here needs.
# torch and triton are pinned in constraints.txt: torch==2.13.0 resolves to the local CPU wheel
# through pip's find-links, and nothing ever pulls the CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
# pip re-resolves everything on every call (~17 s when nothing changed): each venv records a hash of what
# decides its contents (pyproject.toml, constraints.txt, this script) and is skipped while that holds.
STAMP="$(cat pyproject.toml constraints.txt scripts/setup.sh | sha256sum | cut -d' ' -f1)"
up_to_date() { [ -x "$1/bin/python" ] && [ "$(cat "$1/.apclip-setup" 2>/dev/null)" = "$STAMP" ]; }
if up_to_date .venv; then
    echo "setup: .venv is up to date (pyproject.toml, constraints.txt and setup.sh unchanged)" >&2
else
    if [ ! -x .venv/bin/python ]; then
        "$PYTHON" -m venv .venv
    fi
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[cpu,torch,train,llm,triton,test,scale]"
    # The CLIP BPE vocabulary ships inside open_clip_torch; its dependencies (torchvision) are not needed.
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt --no-deps "open_clip_torch==3.3.0"
    echo "$STAMP" > .venv/.apclip-setup
fi
# apclip-serve's Triton server environment: nvidia-pytriton ships the tritonserver binary, whose Python
# backend stub needs numpy<2, so it gets its own venv (the tests find it as .venv-serve).
if ! up_to_date .venv-serve; then
    if [ ! -x .venv-serve/bin/python ]; then
        "$PYTHON" -m venv .venv-serve
    fi
    .venv-serve/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[cpu,triton-server]"
    echo "$STAMP" > .venv-serve/.apclip-setup
fi
# Debian packages: headless Chromium for the --report browser tests, and the fonts --out-video draws labels
# with (Latin and accents: fonts-dejavu-core; Chinese and Japanese: fonts-droid-fallback, 1.8 MB). Tests that
# need one skip without it.
APT=()
command -v chromium >/dev/null 2>&1 || APT+=(chromium)
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || APT+=(fonts-dejavu-core)
[ -f /usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf ] || APT+=(fonts-droid-fallback)
if [ "${#APT[@]}" -gt 0 ]; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        # Bounded: a machine without a reachable Debian mirror skips those tests instead of hanging.
        (timeout 300 apt-get update -qq && DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq "${APT[@]}" >/dev/null) \
            || echo "setup: ${APT[*]} could not be installed; the tests that need them will skip" >&2
    else
        echo "setup: ${APT[*]} not installed (needs root and apt-get); the tests that need them will skip" >&2
    fi
fi
