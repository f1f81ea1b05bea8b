# Build: docker build -t grainstore .                (podman: podman build --format docker -t grainstore .)
# Run:   docker run -p 8080:8080 -v grainstore-data:/data grainstore
# Configuration: -e GRAINSTORE__SECTION__KEY=value for any key of config/default.toml.
# Built and run end to end by tests/container/run.sh.

FROM rust:1-slim-bookworm AS build
WORKDIR /src
# The whole crate: the manifest names test and bench targets that must exist.
COPY . .
RUN cargo build --release --locked --bin grainstore

FROM debian:bookworm-slim
# curl is for the HEALTHCHECK; ca-certificates for TLS to remote stores.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /data grainstore \
    && mkdir -p /data && chown grainstore /data
COPY --from=build /src/target/release/grainstore /usr/local/bin/grainstore
USER grainstore
VOLUME ["/data"]
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8080/healthz || exit 1
# grainstore is PID 1 and handles SIGTERM itself (a graceful drain of at most
# server.shutdown_deadline_ms, 10 s by default): no init process needed. `docker stop`
# also waits 10 s before SIGKILL; give it more (`--stop-timeout`) for a longer drain.
ENTRYPOINT ["grainstore"]
CMD ["serve", "--listen", "0.0.0.0:8080", "--data-dir", "/data"]
