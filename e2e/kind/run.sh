#!/usr/bin/env bash
# The demo scenario on a real Kubernetes cluster (kind), for users with Docker and kind.
#
# UNTESTED: the machines ferry is developed on have no container engine, so this script has
# never run. CI only checks that it is shellcheck clean and that the manifests it installs
# render and validate against the Kubernetes schema (tests/manifests.rs). It is also expected
# to FAIL today, at the "waiting for ferry" step: ferry's controller and agent do not read the
# Kubernetes API yet (issue 12 items 1 and 3; see manifests/README.md, "Status"). It is written
# for the install that issue describes, so that it needs no change when those land.
#
# What it does: creates a kind cluster (one control plane, two workers standing in for the
# scenario's node-1 and node-2), builds the ferry image and loads it into the nodes, installs
# Istio's CRDs (pinned upstream release) and ferry from manifests/ with `kubectl apply -k`,
# applies e2e/scenarios/demo.yaml (the simulated cluster's scenario) with its pods running
# ferry's echo server, labels the mesh namespace istio.io/dataplane-mode=ambient, and runs the
# checks of e2e/scenarios/demo.flows (the same file `ferry demo` reads): each flow's canary
# echoed back whole, and the node proxy's access-log record showing mutual TLS with both
# identities, or plain TCP where the flow expects it. The simulated cluster's wire check
# (tcpdump on the node-to-node links) is not done here. Deletes the cluster on exit, unless
# FERRY_KIND_KEEP=1.
#
# Usage: e2e/kind/run.sh            (needs docker, kind, kubectl, jq; about 10 minutes)
#   FERRY_KIND_CLUSTER=name   cluster name (default ferry-e2e; an existing one is refused)
#   FERRY_KIND_KEEP=1         keep the cluster afterwards, to look around
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
cluster=${FERRY_KIND_CLUSTER:-ferry-e2e}
keep=${FERRY_KIND_KEEP:-}
image=ferry:dev
# Pinned: the node image's Kubernetes minor is the one CI validates the manifests against.
kind_node_image=kindest/node:v1.33.1
istio_version=1.26.2
istio_crds=https://raw.githubusercontent.com/istio/istio/$istio_version/manifests/charts/base/files/crd-all.gen.yaml
gateway_api_version=v1.3.0
gateway_api_crds=https://github.com/kubernetes-sigs/gateway-api/releases/download/$gateway_api_version/standard-install.yaml
scenario=$repo/e2e/scenarios/demo.yaml
flows=$repo/e2e/scenarios/demo.flows
ns=istio-system
context=kind-$cluster

say() { echo "kind-e2e: $*" >&2; }
die() { say "$*"; exit 1; }

for tool in docker kind kubectl jq; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed"
done
if kind get clusters 2>/dev/null | grep -qx "$cluster"; then
  die "a kind cluster named $cluster exists already; delete it or set FERRY_KIND_CLUSTER"
fi

work=$(mktemp -d)
created=
cleanup() {
  local rc=$?
  if [ -n "$created" ] && [ "$rc" != 0 ]; then
    say "failed; what the cluster shows:"
    k get pods -A -o wide >&2 || true
    k -n "$ns" logs --all-containers --prefix --tail=40 -l app.kubernetes.io/part-of=ferry >&2 || true
  fi
  if [ -n "$created" ] && [ -z "$keep" ]; then
    say "deleting the kind cluster $cluster"
    kind delete cluster --name "$cluster" >/dev/null 2>&1 || true
  elif [ -n "$created" ]; then
    say "kept the cluster: kubectl --context $context ...; delete it with: kind delete cluster --name $cluster"
  fi
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT

k() { kubectl --context "$context" "$@"; }

# --- the cluster: two workers for the scenario's two nodes.
cat >"$work/kind.yaml" <<'EOF'
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
nodes:
- role: control-plane
- role: worker
- role: worker
EOF
say "creating the kind cluster $cluster ($kind_node_image)"
kind create cluster --name "$cluster" --image "$kind_node_image" --config "$work/kind.yaml" --wait 120s
created=1
node1=$cluster-worker
node2=$cluster-worker2

# --- the image: the Dockerfile runs the same release build as ./x and CI.
say "building $image"
docker build -t "$image" "$repo"
kind load docker-image "$image" --name "$cluster"

# --- prerequisites (manifests/README.md): Istio's and Gateway API's CRDs, the namespace, the mesh CA.
say "installing Istio $istio_version's CRDs and Gateway API $gateway_api_version's"
k apply --server-side -f "$istio_crds" >/dev/null
k apply --server-side -f "$gateway_api_crds" >/dev/null
k wait --for condition=established --timeout=60s crd/authorizationpolicies.security.istio.io crd/peerauthentications.security.istio.io crd/gateways.gateway.networking.k8s.io
k create namespace "$ns"
k label namespace "$ns" istio.io/dataplane-mode=none
mkdir -p "$work/ca"
docker run --rm --user "$(id -u):$(id -g)" -v "$work/ca:/ca" "$image" ca init /ca/mesh
k -n "$ns" create secret generic cacerts --from-file="$work/ca/mesh"
k -n "$ns" create configmap istio-ca-root-cert --from-file=root-cert.pem="$work/ca/mesh/root-cert.pem"

# --- ferry.
say "installing ferry from manifests/"
kubectl apply -k "$repo/manifests" --context "$context"
say "waiting for ferry"
k -n "$ns" rollout status deployment/ferry-controller --timeout=180s
k -n "$ns" rollout status daemonset/ferry-node-agent --timeout=180s
k -n "$ns" rollout status daemonset/ferry-proxy --timeout=180s

# --- the scenario, adapted to a real cluster: node-1/node-2 become the two workers, the
# Service gets its VIP from the cluster's range, every pod runs ferry's echo server on 8080 (as
# in the simulated cluster), and the mesh label comes afterwards, as a user would add it.
say "applying the demo scenario"
k create --dry-run=client -o json -f "$scenario" |
  jq --arg n1 "$node1" --arg n2 "$node2" --arg image "$image" '
    .items |= map(
      if .kind == "Pod" then
        .spec.nodeName |= (if . == "node-1" then $n1 elif . == "node-2" then $n2 else . end)
        | .spec.containers |= map(. + {image: $image, imagePullPolicy: "IfNotPresent",
            args: ["bench", "serve", "--port", "8080"]})
      elif .kind == "Service" then del(.spec.clusterIP, .spec.clusterIPs)
      elif .kind == "Namespace" then del(.metadata.labels["istio.io/dataplane-mode"])
      else . end)' >"$work/scenario.json"
mesh_namespaces=$(jq -r '.items[] | select(.kind == "Namespace" and .metadata.labels["istio.io/dataplane-mode"] == "ambient") | .metadata.name' \
  <(k create --dry-run=client -o json -f "$scenario"))
k apply -f "$work/scenario.json"
for n in $(jq -r '.items[] | select(.kind == "Namespace") | .metadata.name' "$work/scenario.json"); do
  k -n "$n" wait --for condition=Ready pod --all --timeout=120s
done
for n in $mesh_namespaces; do
  say "labelling namespace $n istio.io/dataplane-mode=ambient"
  k label namespace "$n" istio.io/dataplane-mode=ambient --overwrite
done
# Enrollment is asynchronous: the agent redirects each running pod, then annotates it.
for n in $mesh_namespaces; do
  for p in $(k -n "$n" get pods -o name); do
    k -n "$n" wait --for=jsonpath='{.metadata.annotations.ambient\.istio\.io/redirection}'=enabled "$p" --timeout=60s
  done
done

# --- the checks.
pod_ip() { k -n "${1%/*}" get pod "${1#*/}" -o jsonpath='{.status.podIP}'; }
pod_node() { k -n "${1%/*}" get pod "${1#*/}" -o jsonpath='{.spec.nodeName}'; }
proxy_on() { k -n "$ns" get pods -l app=ferry-proxy --field-selector "spec.nodeName=$1" -o jsonpath='{.items[0].metadata.name}'; }
# The pod behind a Service: the first one its selector matches.
service_pod() {
  local svc=$1 sel
  sel=$(k -n "${svc%/*}" get service "${svc#*/}" -o json | jq -r '.spec.selector | to_entries | map("\(.key)=\(.value)") | join(",")')
  echo "${svc%/*}/$(k -n "${svc%/*}" get pods -l "$sel" -o jsonpath='{.items[0].metadata.name}')"
}

# A Service port's target port on a pod, a named one resolved against the pod's containers.
target_port() {
  local svc=$1 port=$2 pod=$3 tp
  tp=$(k -n "${svc%/*}" get service "${svc#*/}" -o json | jq -r --argjson p "$port" '.spec.ports[] | select(.port == $p) | .targetPort')
  if [[ $tp =~ ^[0-9]+$ ]]; then
    echo "$tp"
  else
    k -n "${pod%/*}" get pod "${pod#*/}" -o json | jq -er --arg n "$tp" '[.spec.containers[].ports[]? | select(.name == $n) | .containerPort][0]'
  fi
}
pod_sa() { k -n "${1%/*}" get pod "${1#*/}" -o jsonpath='{.spec.serviceAccountName}'; }

# Sends the payload from a pod over bash's /dev/tcp and prints what came back.
roundtrip() {
  local from=$1 addr=$2 payload=$3
  # shellcheck disable=SC2016 # expanded by the pod's bash, from its arguments
  k -n "${from%/*}" exec "${from#*/}" -- /bin/bash -c '
    exec 3<>"/dev/tcp/$1/$2" || exit 1
    printf %s "$3" >&3
    timeout 10 head -c "${#3}" <&3' _ "${addr%:*}" "${addr##*:}" "$payload"
}

# The access-log record of a connection, from the proxy on a node (records are written when
# connections close, so this polls).
find_record() {
  local node=$1 direction=$2 src_ip=$3 dst=$4 proxy rec
  proxy=$(proxy_on "$node")
  for _ in $(seq 30); do
    rec=$(k -n "$ns" logs "$proxy" -c proxy | jq -cR --arg d "$direction" --arg s "$src_ip" --arg t "$dst" '
      fromjson? | select(.target == "access" and .direction == $d and .["dst.addr"] == $t
        and ((.["src.addr"] // "") | sub(":[0-9]+$"; "") | ltrimstr("[") | rtrimstr("]")) == $s)' | tail -n 1)
    if [ -n "$rec" ]; then
      echo "$rec"
      return 0
    fi
    sleep 1
  done
  return 1
}

failed=0
# fd 4, so nothing in the loop can read the flows as its standard input.
while read -r expect from to label <&4; do
  case "$expect" in '' | '#'*) continue ;; esac
  kind_of=${to%%:*} rest=${to#*:}
  target=${rest%:*} port=${rest##*:}
  case "$kind_of" in
    pod) dst_pod=$target addr="$(pod_ip "$target"):$port" record_dst=$addr ;;
    service)
      dst_pod=$(service_pod "$target")
      addr="$(k -n "${target%/*}" get service "${target#*/}" -o jsonpath='{.spec.clusterIP}'):$port"
      # The record names the pod the VIP resolved to, on its target port.
      record_dst="$(pod_ip "$dst_pod"):$(target_port "$target" "$port" "$dst_pod")"
      ;;
    *) die "$flows: unknown target $to" ;;
  esac
  if [ "$expect" = mtls ]; then canary=FERRY-MESH-CANARY; else canary=FERRY-PLAIN-CANARY; fi
  payload=$(for _ in $(seq 16); do printf '%s %s ' "$canary" "$label"; done)
  result=ok note=
  if echo=$(roundtrip "$from" "$addr" "$payload") && [ "$echo" = "$payload" ]; then
    echoed=yes
  else
    echoed=no
  fi
  if [ "$expect" = denied ] && [ "$echoed" = yes ]; then
    result=UNEXPECTED note="the connection to $addr was allowed"
  elif [ "$expect" != denied ] && [ "$echoed" = no ]; then
    result=UNEXPECTED note="no whole echo from $addr"
  else
    if [ "$expect" = passthrough ]; then
      node=$(pod_node "$from") direction=outbound
    else
      node=$(pod_node "$dst_pod") direction=inbound
    fi
    if ! rec=$(find_record "$node" "$direction" "$(pod_ip "$from")" "$record_dst"); then
      result=UNEXPECTED note="no $direction access-log record for $record_dst on $node"
    else
      # The verdicts of crates/harness/src/demo.rs, with the identities of the two pods.
      src_id="spiffe://cluster.local/ns/${from%/*}/sa/$(pod_sa "$from")"
      dst_id="spiffe://cluster.local/ns/${dst_pod%/*}/sa/$(pod_sa "$dst_pod")"
      verdict=$(jq -r --arg e "$expect" --arg src "$src_id" --arg dst "$dst_id" --argjson len "${#payload}" '
        (.connection_security_policy == "mutual_tls") as $mtls
        | if $e == "denied" then ((.error // "") | contains("allow policies exist, but none allowed"))
          else (if $e == "mtls" then $mtls and .["src.identity"] == $src and .["dst.identity"] == $dst
           elif $e == "passthrough" then ($mtls | not) and .["dst.hbone_addr"] == null
           else ($mtls | not) and .["src.identity"] == null end) and .bytes_recv == $len end' <<<"$rec")
      [ "$verdict" = true ] || result=UNEXPECTED note="unexpected record: $rec"
    fi
  fi
  printf '  %-52s %s\n' "$label" "$result"
  [ -z "$note" ] || printf '      %s\n' "$note"
  [ "$result" = ok ] || failed=$((failed + 1))
done 4<"$flows"

if [ "$failed" != 0 ]; then
  die "$failed flow(s) did not behave as expected"
fi
say "every flow behaved as expected"
