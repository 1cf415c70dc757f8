# gatestream as a container image: the wheel, installed; no source tree in the image.
# The same steps as tests/integration/test_packaging.py, which runs them on every CI run:
# build the wheel, install it into a fresh environment, run `gatestream` from there.
#   docker build -t gatestream .
#   docker run --rm -e GATESTREAM_DATABASE_URL=... gatestream db migrate
FROM python:3.11-slim AS wheel
WORKDIR /src
COPY . .
RUN pip wheel --no-cache-dir --no-deps -w /dist .

# docker-compose.yml's one-shot `certs` (build target certs): openssl and the local CA's
# scripts, an image of its own so the gatestream image stays the wheel alone
FROM debian:bookworm-slim AS certs
RUN apt-get update && apt-get install -y --no-install-recommends openssl && rm -rf /var/lib/apt/lists/*
COPY ops/tls/certs /usr/local/bin/gatestream-certs
COPY ops/compose/certs /usr/local/bin/gatestream-compose-certs
ENTRYPOINT ["gatestream-compose-certs", "/tls"]

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 gatestream
COPY --from=wheel /dist/ /tmp/dist/
RUN pip install --no-cache-dir /tmp/dist/gatestream-*.whl && rm -rf /tmp/dist
USER gatestream
WORKDIR /home/gatestream
ENV GATESTREAM_LOG_FORMAT=json
ENTRYPOINT ["gatestream"]
CMD ["--help"]
