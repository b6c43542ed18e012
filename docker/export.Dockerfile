# syntax=docker/dockerfile:1
# bevport export image: checkpoint -> ONNX -> INT8 IR. CPU only, non-root.
# BASE must provide python3 >= 3.8 with pip; users get python:3.8 (pin it by digest), a registry-free host can pass
# a Debian bullseye image bootstrapped locally (python3 3.9).
ARG BASE=python:3.8-slim-bullseye
FROM ${BASE}
ARG TORCH_VERSION=1.11.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
RUN python3 -m pip install --upgrade pip \
 && python3 -m pip install --index-url ${TORCH_INDEX} torch==${TORCH_VERSION}
COPY pyproject.toml README.md /src/
COPY src /src/src
COPY recipes /src/recipes
RUN python3 -m pip install "/src[export]" \
 && useradd --create-home --uid 1000 bevport
USER bevport
WORKDIR /work
ENTRYPOINT ["bevport"]
