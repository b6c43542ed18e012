#!/bin/sh
# Intel GPU user-space drivers for OpenVINO's GPU plugin: OpenCL ICD and the Level Zero loader.
#   debian: Debian's packages (bookworm: intel-opencl-icd 22.43, libze1; the Level Zero GPU driver is not packaged)
#   intel:  the release .debs listed with their sha256 in docker/gpu/intel-packages.sha256 (verified before dpkg)
set -eu
mode=${1:-debian}
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
case "$mode" in
  debian)
    apt-get install -y -q --no-install-recommends ocl-icd-libopencl1 intel-opencl-icd libze1 ;;
  intel)
    list=/tmp/intel-packages.sha256
    grep -Ev '^\s*(#|$)' "$list" > /tmp/pkgs || true
    if [ ! -s /tmp/pkgs ]; then
        echo "GPU_RUNTIME=intel: docker/gpu/intel-packages.sha256 lists no packages; fill it or use GPU_RUNTIME=debian" >&2
        exit 1
    fi
    apt-get install -y -q --no-install-recommends ocl-icd-libopencl1 curl
    mkdir -p /tmp/neo && cd /tmp/neo
    while read -r sum url; do
        curl -fsSL -o "$(basename "$url")" "$url"
        echo "$sum  $(basename "$url")" | sha256sum -c -
    done < /tmp/pkgs
    dpkg -i ./*.deb && cd / && rm -rf /tmp/neo ;;
  *) echo "GPU_RUNTIME must be debian or intel, got $mode" >&2; exit 1 ;;
esac
rm -rf /var/lib/apt/lists/*
