# bevport export image: checkpoint -> ONNX -> calibration -> INT8 IR. CPU only, runs as a non-root user.
# Built by `invoke images.build` through the Docker SDK (classic builder: no BuildKit-only syntax).
#
# BASE_IMAGE is pinned by digest for users (python:3.8, the upstream environment). Where no registry is reachable,
# `invoke images.base` bootstraps Debian bullseye and CI builds from it: Debian's python3 there is 3.9, and the
# image label io.bevport.python records which interpreter an image got.
# The digest is python:3.8.20-slim-bullseye's repo digest, the final Python 3.8 image (they stopped updating in
# 2024), pinned alike by several public projects; no registry was reachable here to inspect it.
#
# mmdet3d is not installed. mmdet3d 0.x (PyPI's 0.17.3 and the BEVFusion fork V2XFusion was trained in) lists .cu
# files among the sources of its iou3d, voxel and spconv ops, so it builds only with nvcc, and torch's extension
# builder refuses an nvcc whose CUDA major differs from torch 1.11's (10.2 on PyPI); Debian has only 11.2. bevport's
# model code is its own; the reference path (`bevport parity --source`) imports the user's training tree as it is,
# mounted at run time, with bevport's stand-ins for the three compiled ops its inference path calls, so the image
# carries the tree's import-time requirements (export.in) and, optionally, the pinned trees themselves.
ARG BASE_IMAGE=python:3.8-slim-bullseye@sha256:e191a71397fd61fbddb6712cd43ef9a2c17df0b5e7ba67607128554cd6bff267

FROM ${BASE_IMAGE} AS base
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1 \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt PIP_CERT=/etc/ssl/certs/ca-certificates.crt
COPY ca/site-ca.crt /usr/local/share/ca-certificates/bevport-site-ca.crt
COPY docker/setup-python.sh /usr/local/bin/setup-python.sh
RUN setup-python.sh
ENV PATH=/opt/venv/bin:$PATH

# mmcv-full 1.4.0 ships only sources: its CPU ops compile here once (about 11 minutes on 2 cores) and the layer
# stays cached as long as this stage's inputs do not change; the final stage installs the wheel.
FROM base AS wheels
COPY docker/setup-python.sh /usr/local/bin/setup-python.sh
RUN setup-python.sh build-essential python3-dev
COPY docker/requirements/export-build.txt /tmp/export-build.txt
RUN pip install --require-hashes --no-deps -r /tmp/export-build.txt
COPY docker/requirements/export-sources.txt /tmp/export-sources.txt
RUN MMCV_WITH_OPS=1 pip wheel --require-hashes --no-deps --no-build-isolation -w /wheels -r /tmp/export-sources.txt

# Optional (`--build-arg REFERENCE_SOURCES=pinned`): the upstream training trees at their pinned commits, fetched as
# archives and checked against docker/reference-sources.txt, for `bevport parity --source pinned`. Off by default:
# the build must also work where GitHub cannot be reached.
FROM base AS reference
ARG REFERENCE_SOURCES=none
COPY docker/reference-sources.sh docker/reference-sources.txt /tmp/
RUN mkdir -p /opt/bevport-reference && if [ "$REFERENCE_SOURCES" = pinned ]; then \
      setup-python.sh curl && sh /tmp/reference-sources.sh /tmp/reference-sources.txt /opt/bevport-reference; \
    elif [ "$REFERENCE_SOURCES" != none ]; then echo "REFERENCE_SOURCES must be none or pinned" >&2; exit 1; fi

FROM base
COPY --from=reference /opt/bevport-reference /opt/bevport-reference
COPY docker/requirements/export.txt /tmp/export.txt
RUN pip install --require-hashes --no-deps -r /tmp/export.txt
COPY --from=wheels /wheels /wheels
RUN pip install --no-deps --no-index /wheels/*.whl && rm -rf /wheels
COPY src-tree /src
RUN rm -f /src/src/bevport/recipes && cp -r /src/recipes /src/src/bevport/recipes \
 && pip install --no-deps --no-build-isolation /src && rm -rf /src
# Declared last: a build argument that changes (every commit) would otherwise invalidate the cache of every RUN
# after it, including mmcv-full's compile.
ARG SOURCE_DATE_EPOCH=0
ARG GIT_REVISION=unknown
ARG LOCK_SHA256=none
LABEL io.bevport.image=export io.bevport.lock-sha256=${LOCK_SHA256} org.opencontainers.image.revision=${GIT_REVISION}
USER bevport
WORKDIR /work
CMD ["bevport", "--help"]
