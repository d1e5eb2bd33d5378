# syntax=docker/dockerfile:1
# cdc-monitor image: `cdc-monitor run` (the consumer) by default, and
# `cdc-monitor changefeed ensure` for the one-shot cdc-task service.

FROM rust:1.95-bookworm AS builder
# cmake and libssl-dev: rdkafka builds librdkafka from source and links OpenSSL
# (the `ssl` feature); pkg-config lets openssl-sys find it.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake libssl-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /build
COPY . .
# Cache mounts keep the registry and target dir between builds, so a source
# change does not rebuild librdkafka; the binary is copied out because the
# cached target dir is not part of the image layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/build/target \
    cargo build --release --locked \
 && install -D -m 0755 target/release/cdc-monitor /out/cdc-monitor \
 && install -D -m 0755 target/release/cdc-bench /out/cdc-bench

FROM debian:bookworm-slim
# libssl3 for rdkafka/reqwest TLS, ca-certificates for CDC_ES_CA_FILE-less
# HTTPS, curl only for the HEALTHCHECK below (slim has no HTTP client).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 curl \
 && rm -rf /var/lib/apt/lists/*
# A fixed uid so volume permissions are predictable; the consumer needs no root.
RUN groupadd --system --gid 10001 cdc \
 && useradd --system --uid 10001 --gid cdc --home-dir /nonexistent --shell /usr/sbin/nologin cdc \
 && install -d -o cdc -g cdc -m 0700 /var/lib/cdc-monitor
COPY --from=builder /out/cdc-monitor /usr/local/bin/cdc-monitor
# `cdc-monitor bench` runs its sibling.
COPY --from=builder /out/cdc-bench /usr/local/bin/cdc-bench
USER cdc:cdc
# No CDC_HTTP_ADDR here: the default, 127.0.0.1:3000, needs no token, so the
# one-shot `changefeed ensure` and a bare `docker run` expose nothing. A
# published consumer sets CDC_HTTP_ADDR=0.0.0.0:3000 with CDC_HTTP_TOKEN(_FILE),
# as docker-compose.yml does.
# The data directory holds the masking key (mask.key): mount a volume
# there so that hashes and document ids survive a new container.
ENV CDC_DATA_DIR=/var/lib/cdc-monitor \
    CDC_LOG_FORMAT=json
EXPOSE 3000
# /healthz is liveness only (200 while the process serves HTTP) and open
# without a token; readiness (/readyz, Kafka and ES reachable) is what
# scripts/e2e-compose.sh polls.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 CMD curl -fsS http://127.0.0.1:3000/healthz >/dev/null || exit 1
ENTRYPOINT ["cdc-monitor"]
CMD ["run"]
