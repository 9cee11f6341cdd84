# syntax=docker/dockerfile:1
# The operator's image: one binary, the operator (`run`) and its subcommands (`documents …`
# in the backup and restore Jobs), on a glibc distroless base (no shell, no package
# manager), as a non-root user, with nothing written to its root file system (run it with
# `readOnlyRootFilesystem: true`; the documents Jobs mount an emptyDir at /tmp for their
# work files). Build: `docker build -t REGISTRY/openemr-operator:VERSION .` (README,
# "The image"). Linted by hadolint in `make test` (tests/stack_template.rs).

ARG RUST_VERSION=1.95

FROM docker.io/library/rust:${RUST_VERSION}-slim-trixie AS build
WORKDIR /build
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY tests ./tests
# The registry and the target directory are build caches, not layers.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/build/target \
    cargo build --release --locked --bin openemr-operator \
    && install -D -m 0555 target/release/openemr-operator /out/openemr-operator

# glibc, libgcc and CA certificates, nothing more; the same Debian release as the build's,
# so the binary finds the glibc it was linked against.
FROM gcr.io/distroless/cc-debian13:nonroot
LABEL org.opencontainers.image.title="openemr-operator" \
      org.opencontainers.image.description="Runs OpenEMR clinics on AWS and keeps their patient data safe" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/openemr-operator /usr/local/bin/openemr-operator
# distroless's `nonroot`, by number so that `runAsNonRoot` can tell.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/openemr-operator"]
CMD ["run"]
