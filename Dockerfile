# syntax=docker/dockerfile:1
#
# Framewatch image: two stages.
#
#   builder  installs torch (CPU wheels) + the [build] extra, exports all-MiniLM-L6-v2 to ONNX with
#            `framewatch build-model`, and builds the framewatch wheel. torch never leaves this stage.
#   runtime  a fresh venv with the wheel and its runtime dependencies only (onnxruntime, tokenizers, ...),
#            the exported model, a non-root user, and nothing that needs a writable root filesystem.
#
# Build:   docker build -t framewatch:0.1.0 .
# Run:     docker run --rm --read-only --tmpfs /tmp -p 9464:9464 \
#            -e FRAMEWATCH_KAFKA_BOOTSTRAP_SERVERS=broker:9092 framewatch:0.1.0
#
# The base image is pinned to an exact tag. For reproducible release builds, pin the digest as well
# (`docker buildx imagetools inspect python:3.11.14-slim-bookworm`) and write it as
# `python:3.11.14-slim-bookworm@sha256:<digest>` in both FROM lines.
#
# tests/integration/deploy/test_dockerfile.py checks this file (pinned base, non-root USER, HEALTHCHECK, EXPOSE, no torch in
# the runtime stage) and replays the runtime stage's `pip install` steps in a throwaway venv.

############################################################################################ builder
FROM python:3.11.14-slim-bookworm AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
# .dockerignore is an allow-list: pyproject, README, monitor/, the parity texts build-model checks against,
# and models/classifier/ if present. .venv, the prebuilt models/minilm, tests and git metadata stay out.
COPY . /src

# torch from the CPU-only index first, so the [build] extra's torch pin is already satisfied and pip never
# pulls the CUDA wheels.
# Editable install: build-model reads data/parity_texts.jsonl relative to the source tree.
RUN python -m venv /opt/build \
 && /opt/build/bin/pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
 && /opt/build/bin/pip install -e "/src[build]"

# Export the embedder (the per-channel int8 model.int8.onnx the sidecar loads by default, the fp32 model.onnx it
# is quantised from and that FRAMEWATCH_EMBEDDING_ONNX_FILE can select, tokenizer.json, manifest.json) and build
# the wheel for the runtime.
# The response classifier (models/classifier/, plain JSON from `framewatch train-classifier`) is carried
# over as is; the scorer's default path is repo-relative, so the runtime sets FRAMEWATCH_CLASSIFIER_DIR.
RUN /opt/build/bin/framewatch build-model --out /opt/models/minilm \
 && test -s /opt/models/minilm/model.onnx \
 && test -s /opt/models/minilm/model.int8.onnx \
 && test -s /opt/models/minilm/tokenizer.json \
 && if [ -d /src/models/classifier ]; then cp -r /src/models/classifier /opt/models/classifier; fi \
 && /opt/build/bin/pip wheel /src --no-deps --wheel-dir /dist

############################################################################################ runtime
FROM python:3.11.14-slim-bookworm AS runtime

ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown

LABEL org.opencontainers.image.title="framewatch" \
      org.opencontainers.image.description="Monitoring sidecar that catches LLM misbehaviour hidden behind semantic trigger framings" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.source="https://github.com/framewatch/framewatch" \
      org.opencontainers.image.documentation="https://github.com/framewatch/framewatch/blob/main/docs/deployment.md" \
      org.opencontainers.image.vendor="Framewatch contributors" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11.14-slim-bookworm"

# HOME and TMPDIR point at /tmp, the only writable path: mount a tmpfs (docker --tmpfs /tmp) or an
# emptyDir (the Helm chart does) there and the root filesystem can be read-only. Bytecode is compiled at
# install time, so the interpreter never tries to write __pycache__.
ENV VIRTUAL_ENV=/opt/framewatch/venv \
    PATH=/opt/framewatch/venv/bin:/usr/local/bin:/usr/bin:/bin \
    HOME=/tmp \
    TMPDIR=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FRAMEWATCH_MODEL_DIR=/opt/framewatch/models/minilm \
    FRAMEWATCH_CLASSIFIER_DIR=/opt/framewatch/models/classifier \
    FRAMEWATCH_HTTP_HOST=0.0.0.0 \
    FRAMEWATCH_HTTP_PORT=9464

COPY --from=builder /dist/ /tmp/wheels/

# The runtime install: only the framewatch wheel and its declared runtime dependencies (no extras), so
# torch cannot arrive here. tests/integration/deploy/test_dockerfile.py runs exactly these pip steps in a fresh venv.
RUN python -m venv "$VIRTUAL_ENV" \
 && "$VIRTUAL_ENV/bin/pip" install --no-cache-dir --compile /tmp/wheels/framewatch-*.whl \
 && rm -rf /tmp/wheels \
 && "$VIRTUAL_ENV/bin/python" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is not None)"

COPY --from=builder --chown=0:0 /opt/models/ /opt/framewatch/models/

# Numeric UID/GID so Kubernetes' runAsNonRoot can verify it without /etc/passwd lookups.
RUN groupadd --system --gid 10001 framewatch \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin framewatch \
 && chmod -R a+rX /opt/framewatch

USER 10001:10001
WORKDIR /tmp

EXPOSE 9464

HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('FRAMEWATCH_HTTP_PORT', '9464'), timeout=4)"]

ENTRYPOINT ["framewatch"]
CMD ["run"]
