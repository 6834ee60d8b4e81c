# cm-studio: the Gradio app on a CUDA runtime. Build: docker build -t cm-studio .
# Run:  docker run --gpus all -p 7860:7860 -v "$PWD/checkpoints:/data/checkpoints" cm-studio
# Released checkpoints live on the volume (CM_CHECKPOINT_DIR); the embedded digits models ship
# inside the image (checkpoints/embedded), so the app starts with no volume at all.
FROM nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHON=python3.11 \
    CM_CHECKPOINT_DIR=/data/checkpoints \
    CM_DEFAULT_MODEL=cd_digits32 \
    GRADIO_SERVER_NAME=0.0.0.0 \
    GRADIO_SERVER_PORT=7860 \
    GRADIO_ANALYTICS_ENABLED=False \
    HF_HOME=/data/checkpoints/hf

RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv curl ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# A non-root user owns the app and the checkpoint volume.
RUN useradd --create-home --uid 1000 cm \
 && mkdir -p /app /data/checkpoints \
 && chown -R cm:cm /app /data
WORKDIR /app
USER cm

# Dependencies first (a cached layer): the same script a fresh install runs, without --dev.
COPY --chown=cm:cm installations.sh requirements.txt ./
RUN bash installations.sh

COPY --chown=cm:cm . .
VOLUME ["/data/checkpoints"]

EXPOSE 7860
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
  CMD curl -fsS "http://127.0.0.1:${GRADIO_SERVER_PORT}/" > /dev/null || exit 1

CMD [".venv/bin/python", "app.py"]
