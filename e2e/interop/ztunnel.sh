#!/usr/bin/env bash
# Interop with Istio's ztunnel on the simulated cluster: ztunnel runs as one node's proxy,
# pointed at `ferry controller` exactly as ferry's proxies are (XDS_ADDRESS, CA_ADDRESS,
# XDS_ROOT_CA, AUTH_TOKEN with a token bound to that node's ztunnel pod), next to a ferry proxy
# on the other node. It must receive workloads and policies over WDS and certificates over the
# CA API, and every flow of `ferry demo` must behave: mutual TLS with both SPIFFE identities in
# the access logs, the mesh canary never in plaintext on the node-to-node links, and the
# scenario's AuthorizationPolicy (received over WDS) enforced by the destination's proxy (the
# `denied` flow). Run once with ztunnel on the destination node and once on the source node, so
# HBONE and policy are checked both ways.
#
# Usage (as root): e2e/interop/ztunnel.sh /path/to/ztunnel [path/to/ferry]
# Build ztunnel yourself, outside this repository (github.com/istio/ztunnel; e.g. with the
# tls-ring and testing features). CI has no ztunnel binary, so CI does not run this.
set -euo pipefail

ztunnel=${1:?usage: e2e/interop/ztunnel.sh /path/to/ztunnel [path/to/ferry]}
ferry=${2:-$(cd "$(dirname "$0")/../.." && pwd)/target/release/ferry}
[ -x "$ztunnel" ] || { echo "not an executable: $ztunnel" >&2; exit 2; }
[ -x "$ferry" ] || { echo "not an executable: $ferry (build with cargo build --release)" >&2; exit 2; }

"$ztunnel" --version 2>/dev/null | head -1 || true
for node in 2 1; do
  echo "== ztunnel on node-$node, ferry proxy on the other node, ferry controller serving both"
  "$ferry" demo --node-proxy "$node=$ztunnel" --keep-logs
done
echo "interop: ztunnel and ferry carried every demo flow, in both directions, on one ferry controller"
