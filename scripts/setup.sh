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
# Debian packages, installed as root with one bounded `apt-get update` (a machine without a reachable
# mirror skips the tests that need them instead of hanging):
#   chromium                              the --report browser test (tests/test_report_browser.py)
#   cmake g++ libopencv-dev nlohmann-json3-dev libssl-dev ccache
#                                         the native runtime (CMakeLists.txt; tests/test_native_*.py)
#   ffmpeg python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-{base,good,ugly}
#                                         HTTP and RTSP stream servers (tests/test_stream_many.py; GStreamer's
#                                         RTSP server runs on the system python3)
#   fonts-dejavu-core fonts-droid-fallback  --out-video labels: Latin and accents; Chinese and Japanese (1.8 MB)
APT_PACKAGES=()
command -v chromium >/dev/null 2>&1 || APT_PACKAGES+=(chromium)
command -v cmake >/dev/null 2>&1 || APT_PACKAGES+=(cmake)
command -v g++ >/dev/null 2>&1 || APT_PACKAGES+=(g++)
command -v ccache >/dev/null 2>&1 || APT_PACKAGES+=(ccache)
[ -f /usr/include/opencv4/opencv2/videoio.hpp ] || APT_PACKAGES+=(libopencv-dev)
[ -f /usr/include/nlohmann/json.hpp ] || APT_PACKAGES+=(nlohmann-json3-dev)
[ -f /usr/include/openssl/evp.h ] || APT_PACKAGES+=(libssl-dev)
command -v ffmpeg >/dev/null 2>&1 || APT_PACKAGES+=(ffmpeg)
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || APT_PACKAGES+=(fonts-dejavu-core)
[ -f /usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf ] || APT_PACKAGES+=(fonts-droid-fallback)
for pkg in python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good \
           gstreamer1.0-plugins-ugly; do
    dpkg -s "$pkg" >/dev/null 2>&1 || APT_PACKAGES+=("$pkg")
done
if [ ${#APT_PACKAGES[@]} -gt 0 ]; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        (timeout 300 apt-get update -qq && DEBIAN_FRONTEND=noninteractive timeout 900 \
            apt-get install -y -qq "${APT_PACKAGES[@]}" >/dev/null) \
            || echo "setup: could not install ${APT_PACKAGES[*]}; the tests that need them will skip" >&2
    else
        echo "setup: ${APT_PACKAGES[*]} not installed (needs root and apt-get); the tests that need them will skip" >&2
    fi
fi
