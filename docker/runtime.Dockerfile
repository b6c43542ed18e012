# bevport runtime image: OpenVINO + the Intel GPU compute runtime; runs validate / infer / bench. No torch.
# Runs as a non-root user; give it the GPU with `--device /dev/dri --group-add <render gid>` (invoke does).
# BASE_IMAGE: any Debian bookworm with (or without) python3; `invoke images.base` bootstraps one from a mirror.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}
ARG GPU_RUNTIME=debian
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1 \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt PIP_CERT=/etc/ssl/certs/ca-certificates.crt
COPY ca/site-ca.crt /usr/local/share/ca-certificates/bevport-site-ca.crt
COPY docker/setup-python.sh docker/install-gpu-runtime.sh docker/fetch-verified.sh /usr/local/bin/
COPY docker/gpu/intel-packages.sha256 /tmp/intel-packages.sha256
RUN setup-python.sh && install-gpu-runtime.sh "$GPU_RUNTIME"
ENV PATH=/opt/venv/bin:$PATH
COPY docker/requirements/runtime.txt /tmp/runtime.txt
RUN pip install --require-hashes --no-deps -r /tmp/runtime.txt
COPY src-tree /src
RUN rm -f /src/src/bevport/recipes && cp -r /src/recipes /src/src/bevport/recipes \
 && pip install --no-deps --no-build-isolation /src && rm -rf /src
# Declared last: a build argument that changes (every commit) would otherwise invalidate the cache of every RUN
# after it, including mmcv-full's compile.
ARG SOURCE_DATE_EPOCH=0
ARG GIT_REVISION=unknown
ARG LOCK_SHA256=none
LABEL io.bevport.image=runtime io.bevport.gpu-runtime=${GPU_RUNTIME} io.bevport.lock-sha256=${LOCK_SHA256} \
      org.opencontainers.image.revision=${GIT_REVISION}
USER bevport
WORKDIR /work
CMD ["bevport", "--help"]
