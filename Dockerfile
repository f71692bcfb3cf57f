# One image for every ferry role: `ferry controller`, `ferry proxy`, `ferry agent` (the
# entrypoint's subcommands) and ferry-cni, which `ferry agent --install-cni` copies onto the
# node.
#
#   docker build -t ferry:dev .
#
# Not built on the machines ferry is developed on (they have no container engine); the build
# command below is the one `./x` and CI run, which tests/manifests.rs checks, so the image
# carries the binaries the test suite tested.

# --- build: the workspace's binaries (ferry, ferry-cni), release profile, locked dependencies.
FROM rust:1.89-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked

# --- runtime: Debian slim with what the roles run besides ferry itself.
FROM debian:bookworm-slim
# nftables: `ferry agent` runs `nft -f -` inside each enrolled pod's network namespace.
# iproute2: `ip`, to inspect a pod's rules and routes from the agent or proxy container.
# ca-certificates: XDS_ROOT_CA=SYSTEM (the OS bundle) must have a bundle to read.
RUN apt-get update \
 && apt-get install -y --no-install-recommends nftables iproute2 ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/ferry /usr/local/bin/ferry
COPY --from=build /src/target/release/ferry-cni /usr/local/bin/ferry-cni
# ztunnel's relative defaults (./var/run/secrets/...) resolve from /, as in Istio's image.
WORKDIR /
# Non-root by default: the controller runs as this user. The proxy and the agent need root
# with a few capabilities, which their manifests ask for explicitly (manifests/README.md).
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/ferry"]
