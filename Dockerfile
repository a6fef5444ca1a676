# syntax=docker/dockerfile:1
# One image with the three server binaries, for the Helm chart (helm/arena):
#   /usr/local/bin/arena-allocator, /usr/local/bin/arena-gameserver, /usr/local/bin/arena-fleet
#
#   docker build -t arena:0.1.0 .
#
# The runtime is distroless (glibc and libgcc, no shell) and runs as 65532 (nonroot), as the
# chart's pods do. The build uses BuildKit's cache mounts for the registry and target/.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bins -p arena-allocator -p arena-gameserver -p arena-fleet \
 && mkdir -p /out \
 && cp target/release/arena-allocator target/release/arena-gameserver target/release/arena-fleet /out/

# Debian 12 like the build stage, so the binaries find the glibc they were linked against.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build --chown=0:0 --chmod=0755 /out/ /usr/local/bin/
USER 65532:65532
# The chart sets the command of each container; alone, the image shows the allocator's help.
ENTRYPOINT ["/usr/local/bin/arena-allocator"]
CMD ["--help"]
