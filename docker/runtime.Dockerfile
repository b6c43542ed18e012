# syntax=docker/dockerfile:1
# bevport runtime image: OpenVINO only (no torch); runs validate / infer / bench. Non-root.
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}
ENV PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
COPY pyproject.toml README.md /src/
COPY src /src/src
COPY recipes /src/recipes
RUN python3 -m pip install "/src[runtime]" \
 && useradd --create-home --uid 1000 bevport
USER bevport
WORKDIR /work
ENTRYPOINT ["bevport"]
