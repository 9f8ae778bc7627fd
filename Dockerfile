# syntax=docker/dockerfile:1
#
# fanout-gateway image: both binaries (fanout-gateway, fanoutctl) on debian:bookworm-slim.
#
#   docker build -t fanout-gateway:0.1.0 .
#
# The build stage runs .ci/build-binaries, the same script CI runs against its debug build, so
# what the image ships (the fetch from Cargo.lock, the offline build, the --help and shared
# library checks) is exercised on every CI run even where no Docker engine is available.

# --- build -----------------------------------------------------------------------------------
# The build needs gcc, make, perl and cmake: librdkafka is compiled from source by rdkafka-sys
# with CMake, and OpenSSL, zlib, zstd and libcurl (OIDC) are built from their crates and linked
# in statically, so no -dev package is installed.
# protoc comes from the protoc-bin-vendored crate (proto/build.rs), so no system protoc.
# Same Debian release as the runtime stage, so the glibc the binaries link against is there.
FROM rust:1.95-bookworm AS build
# Named, although the image has them: the build needs exactly these (.ci/setup installs the same).
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake make perl \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# Cache mounts keep the crate downloads and the incremental target/ between builds; they are not
# part of the image, which is why the script copies the binaries out to /out.
# `cargo fetch --locked` downloads exactly what Cargo.lock pins, then the build runs --offline.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    .ci/build-binaries release /out

# --- runtime ---------------------------------------------------------------------------------
FROM debian:bookworm-slim

# Placeholder: set it to where the source lives (docker build --build-arg SOURCE_URL=...).
ARG SOURCE_URL="https://example.com/fanout-gateway"
LABEL org.opencontainers.image.title="fanout-gateway" \
      org.opencontainers.image.description="Kafka to gRPC fan-out gateway: one long-lived consumer group, routing by labels, commits after acks" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.licenses="Apache-2.0"

# ca-certificates: TLS to brokers (the linked-in OpenSSL finds /etc/ssl/certs by probing the
# usual paths) and to the Kubernetes API (discovery.mode = "kube"). Nothing else:
# .ci/build-binaries checks with ldd that the binaries need only libc6 and libgcc-s1.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# A non-root user with a fixed numeric id (the one k8s/statefulset.yaml runs as), so
# runAsNonRoot can be verified by the kubelet.
RUN groupadd --gid 65532 fanout \
 && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin fanout

COPY --from=build /out/fanout-gateway /out/fanoutctl /usr/local/bin/

# 50051: Subscribe gRPC (server.listen). 9090: admin gRPC API, /metrics, /healthz, /readyz
# (server.admin_listen).
EXPOSE 50051 9090
USER 65532
# The config file is mounted at /etc/fanout/fanout.toml (k8s/configmap.yaml); FANOUT_CONFIG
# also sets it. SIGTERM (Docker's and Kubernetes' default stop signal) starts a graceful stop.
ENTRYPOINT ["fanout-gateway"]
CMD ["serve", "--config", "/etc/fanout/fanout.toml"]
