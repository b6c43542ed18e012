#!/bin/sh
# Intel GPU user-space drivers for OpenVINO's GPU plugin: OpenCL ICD and Level Zero.
#   debian: Debian's packages (bookworm: intel-opencl-icd 22.43, libze1; the Level Zero GPU driver is not packaged)
#   intel:  Intel's release .debs listed with their sha256 in docker/gpu/intel-packages.sha256, each checked before
#           apt installs them (apt resolves their Debian dependencies), as OpenVINO's own runtime images do
set -eu
mode=${1:-debian}
export DEBIAN_FRONTEND=noninteractive
case "$mode" in
  debian)
    apt-get update -q
    apt-get install -y -q --no-install-recommends ocl-icd-libopencl1 intel-opencl-icd libze1 ;;
  intel)
    apt-get update -q
    apt-get install -y -q --no-install-recommends ocl-icd-libopencl1 libze1 curl
    fetch-verified.sh /tmp/intel-packages.sha256 /tmp/neo
    apt-get install -y -q --no-install-recommends /tmp/neo/*.deb
    rm -rf /tmp/neo ;;
  *) echo "GPU_RUNTIME must be debian or intel, got $mode" >&2; exit 1 ;;
esac
rm -rf /var/lib/apt/lists/*
