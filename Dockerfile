# GeeCache-rs node image.
#
#   docker build -t geecache .                        # compiles in the Rust image (default)
#   scripts/docker-build.sh                           # machines without a registry: local base
#                                                     # images and the host-built binary
ARG RUST_IMAGE=rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUNTIME_IMAGE} AS runtime-base
RUN (getent group geecache || groupadd --system geecache) \
 && (getent passwd geecache || useradd --system --gid geecache --home-dir /data --no-create-home geecache) \
 && mkdir -p /data /etc/geecache /run/geecache && chown geecache:geecache /data /run/geecache
COPY config/default.toml /etc/geecache/default.toml
ENV GEECACHE_CONFIG=/etc/geecache/default.toml \
    GEECACHE_DATA_DIR=/data \
    GEECACHE_LOG_FORMAT=json
USER geecache
WORKDIR /data
EXPOSE 9999 8001
# The binary is PID 1 (exec form): SIGTERM reaches it and it leaves the ring, then drains.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=5s --timeout=2s --start-period=5s --retries=3 \
  CMD ["geecache", "health", "--url", "http://127.0.0.1:9999/health"]
ENTRYPOINT ["geecache"]
CMD ["node"]

# The host's release binary, stripped (scripts/docker-build.sh builds it on the same Debian
# release). Before the compiling stage, so that a builder without BuildKit never needs the
# Rust image for this target.
FROM runtime-base AS prebuilt
COPY --chown=root:root target/docker/geecache /usr/local/bin/geecache

FROM ${RUST_IMAGE} AS build
RUN apt-get update && apt-get install -y --no-install-recommends make && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY benches benches
COPY examples examples
COPY tests tests
COPY config config
# With AWS discovery (cloudmap://, ecs:// seeds), which the ECS deployment can use.
RUN cargo build --release --locked --features aws --bin geecache && cp target/release/geecache /geecache


FROM runtime-base AS runtime
COPY --from=build /geecache /usr/local/bin/geecache
