# Distillery server on a CUDA runtime (the torch wheels bring their own CUDA
# libraries; the base image supplies the runtime environment the NVIDIA
# container toolkit expects). Run with:
#   docker run --gpus all -p 50051:50051 -v distillery-data:/data -v /datasets:/datasets:ro distillery
FROM nvidia/cuda:13.0.0-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PATH=/opt/venv/bin:$PATH

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 distillery \
    && mkdir -p /data /datasets \
    && chown distillery:distillery /data

WORKDIR /app
# Dependencies first: this layer is rebuilt only when the lock file changes.
COPY requirements.lock ./
RUN python3 -m venv /opt/venv && pip install -r requirements.lock

COPY pyproject.toml README.md ./
COPY protos protos
COPY distill distill
COPY exporters exporters
COPY service service
RUN pip install --no-deps .

USER distillery
VOLUME /data
EXPOSE 50051
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["distillery", "--address", "localhost:50051", "health"]
ENTRYPOINT ["distillery", "serve", "--data-dir", "/data", "--data-root", "/datasets", "--port", "50051"]
