#!/usr/bin/env bash
# Creates .venv and installs apclip with the CPU extras every command here needs.
# torch and triton are pinned in constraints.txt: torch==2.13.0 resolves to the local CPU wheel
# through pip's find-links, and nothing ever pulls the CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[cpu,torch,train,llm,triton,test,scale]"
# The CLIP BPE vocabulary ships inside open_clip_torch; its dependencies (torchvision) are not needed.
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt --no-deps "open_clip_torch==3.3.0"
# apclip-serve's Triton server environment: nvidia-pytriton ships the tritonserver binary, whose Python
# backend stub needs numpy<2, so it gets its own venv (the tests find it as .venv-serve).
if [ ! -x .venv-serve/bin/python ]; then
    "$PYTHON" -m venv .venv-serve
fi
.venv-serve/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[cpu,triton-server]"
# Debian packages, installed as root with one bounded `apt-get update` (a machine without a reachable
# mirror skips the tests that need them instead of hanging):
#   chromium                              the --report browser test (tests/test_report_browser.py)
#   cmake g++ libopencv-dev nlohmann-json3-dev libssl-dev ccache
#                                         the native runtime (CMakeLists.txt; tests/test_native_*.py)
#   ffmpeg python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-{base,good,ugly}
#                                         HTTP and RTSP stream servers (tests/test_stream_many.py; GStreamer's
#                                         RTSP server runs on the system python3)
APT_PACKAGES=()
command -v chromium >/dev/null 2>&1 || APT_PACKAGES+=(chromium)
command -v cmake >/dev/null 2>&1 || APT_PACKAGES+=(cmake)
command -v g++ >/dev/null 2>&1 || APT_PACKAGES+=(g++)
command -v ccache >/dev/null 2>&1 || APT_PACKAGES+=(ccache)
[ -f /usr/include/opencv4/opencv2/videoio.hpp ] || APT_PACKAGES+=(libopencv-dev)
[ -f /usr/include/nlohmann/json.hpp ] || APT_PACKAGES+=(nlohmann-json3-dev)
[ -f /usr/include/openssl/evp.h ] || APT_PACKAGES+=(libssl-dev)
command -v ffmpeg >/dev/null 2>&1 || APT_PACKAGES+=(ffmpeg)
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
