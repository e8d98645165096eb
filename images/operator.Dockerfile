# syntax=docker/dockerfile:1
# The operator image: the janus-operator binary on distroless/cc (glibc + libgcc, no
# shell, no package manager), as user 65532. Build from the repository root:
#   docker build -f images/operator.Dockerfile -t ghcr.io/janus/janus-operator:0.1.0 .
# images/build.py `operator` assembles the same root filesystem without a Docker
# engine (Debian 12 packages libc6 + libgcc-s1 and the CA bundle).
ARG RUST_VERSION=1.95
FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
# Only the operator's dependency tree is compiled (no libtorch needed).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p janus-operator --bin janus-operator \
    && install -m 0755 target/release/janus-operator /janus-operator

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /janus-operator /usr/local/bin/janus-operator
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/janus-operator"]
