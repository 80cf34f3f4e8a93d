# The backend on the default models, as `autoannotator serve` runs it in the tests.
FROM python:3.11-slim

# libgomp: OpenMP runtime of onnxruntime and scikit-learn; libglib: OpenCV's headless build.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY requirements.txt ./
RUN pip install --no-cache-dir --no-deps -r requirements.txt

COPY pyproject.toml README.md label_config.xml ./
COPY backend ./backend
COPY models ./models
RUN pip install --no-cache-dir --no-deps -e .

ENV DATA_DIR=/data \
    HOST=0.0.0.0 \
    PORT=9090 \
    WORKERS=1 \
    THREADS=4
VOLUME /data
EXPOSE 9090
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s CMD \
    python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9090/health', timeout=4)"
CMD ["autoannotator", "serve"]
