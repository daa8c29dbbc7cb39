# syntax=docker/dockerfile:1
#
# crosstalk container image.
#
#   docker build -t crosstalk .
#   docker run --rm -v "$PWD/crosstalk.toml:/etc/crosstalk/crosstalk.toml:ro" crosstalk
#
# The entrypoint is `crosstalk serve`; the default command adds `--config /etc/crosstalk/crosstalk.toml`.
# Other subcommands: docker run --rm --entrypoint /usr/local/bin/crosstalk crosstalk --help
#
# Inside a container, loopback listeners are reachable only from the same network namespace
# (the same Kubernetes pod): bind the admin listener to 0.0.0.0 to scrape it from outside.
# Recommended .dockerignore: target/ and .git/ (they are not needed in the build context).

ARG RUST_IMAGE=rust:1-bookworm

# ---- build -------------------------------------------------------------------------------------
FROM ${RUST_IMAGE} AS builder
WORKDIR /src

# Only what the build needs (add build.rs, benches/ etc. here if Cargo.toml ever names them).
# The cache mounts keep the registry and target/ between builds, so the binary is copied out
# of target/ in the same RUN.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked \
 && install -D -m 0755 target/release/crosstalk /out/usr/local/bin/crosstalk \
 && install -d -m 0750 /out/var/lib/crosstalk

# ---- runtime -----------------------------------------------------------------------------------
# glibc + libgcc, no shell, no package manager; runs as uid/gid 65532 ("nonroot").
FROM gcr.io/distroless/cc-debian12:nonroot

LABEL org.opencontainers.image.title="crosstalk" \
      org.opencontainers.image.description="Observability sidecar that catches cross-user state leaks from traces and WebSocket event logs" \
      org.opencontainers.image.source="https://github.com/crosstalk-dev/crosstalk" \
      org.opencontainers.image.licenses="Apache-2.0"

COPY --from=builder /out/usr/local/bin/crosstalk /usr/local/bin/crosstalk
# The storage dir, writable by the non-root user; mount a volume here to keep findings.
COPY --from=builder --chown=65532:65532 /out/var/lib/crosstalk /var/lib/crosstalk

USER 65532:65532
WORKDIR /var/lib/crosstalk
VOLUME ["/var/lib/crosstalk"]

# OTLP gRPC, OTLP HTTP, admin (/metrics, /live, /ready, /api/v1/findings)
EXPOSE 4317 4318 9477

STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/crosstalk", "serve"]
CMD ["--config", "/etc/crosstalk/crosstalk.toml"]
