#!/bin/sh
# Prepare any Debian-based base image for bevport: trust the site CA (an empty file means none), make sure a
# python3 with venv exists (python:3.x images have one; a debootstrapped Debian gets Debian's), create /opt/venv,
# and add the non-root user. Extra Debian packages for a build stage are passed as arguments.
set -eu
CA=/usr/local/share/ca-certificates/bevport-site-ca.crt
if [ ! -s "$CA" ]; then rm -f "$CA"; fi
export DEBIAN_FRONTEND=noninteractive
need=""
command -v python3 >/dev/null 2>&1 || need="python3 python3-venv python3-dev"
python3 -c "import venv, ensurepip" >/dev/null 2>&1 || need="$need python3-venv"
if [ -n "$need$*" ] || [ -f "$CA" ]; then
    apt-get update -q
    apt-get install -y -q --no-install-recommends ca-certificates $need "$@"
    rm -rf /var/lib/apt/lists/*
fi
update-ca-certificates >/dev/null 2>&1 || true
python3 -m venv /opt/venv
/opt/venv/bin/python -m pip install -q --upgrade "pip<24.1"
id bevport >/dev/null 2>&1 || useradd --create-home --uid 1000 --shell /bin/sh bevport
python3 -c "import platform; print(platform.python_version())" > /etc/bevport-python-version
