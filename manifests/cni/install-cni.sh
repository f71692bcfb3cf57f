#!/bin/sh
# Installs or removes ferry-cni on a node: the plugin binary in the host's CNI binary directory
# and a `ferry-cni` entry appended to the plugin chain of the host's primary network
# configuration (the first *.conflist, in the order the container runtime reads them).
#
# `ferry agent` has no install step of its own yet (issue 12 item 3), so the node agent
# DaemonSet runs this as an init container (`install`), and the uninstall DaemonSet in
# manifests/uninstall/ runs it with `remove`. It is in the image as /usr/local/bin/ferry-install-cni.
#
# Usage: ferry-install-cni install|remove
#   CNI_BIN_DIR   host CNI binary directory, as mounted (default /host/opt/cni/bin)
#   CNI_NET_DIR   host CNI configuration directory, as mounted (default /host/etc/cni/net.d)
#   FERRY_CNI_SOCKET  the agent socket written into the entry (default /var/run/ferry/cni.sock)
#
# Why a chained entry and never a conflist of our own: ferry-cni only reports pods to the agent
# and passes the previous plugin's result through, so it must run after the network plugin in
# the same chain; a separate conflist sorted first would replace the pod network.
#
# Every write is a copy to a temporary file in the same directory followed by a rename, so the
# runtime never reads a half-written binary or configuration. Both commands are idempotent.
set -eu

bin_dir=${CNI_BIN_DIR:-/host/opt/cni/bin}
net_dir=${CNI_NET_DIR:-/host/etc/cni/net.d}
socket=${FERRY_CNI_SOCKET:-/var/run/ferry/cni.sock}
plugin=${FERRY_CNI_PLUGIN:-/usr/local/bin/ferry-cni}

say() { echo "ferry-install-cni: $*" >&2; }

# The primary network configuration: the runtime uses the lexically first file, so that is the
# one to chain into. Empty when there is none yet. A plain *.conf (one plugin, no chain) is
# refused rather than rewritten: converting it would change how the runtime reads the network.
primary_conflist() {
  first=$(find "$net_dir" -maxdepth 1 -type f \( -name '*.conflist' -o -name '*.conf' -o -name '*.json' \) | LC_ALL=C sort | head -n 1)
  case "$first" in
    "" | *.conflist) echo "$first" ;;
    *) say "$first is not a .conflist; ferry-cni can only be chained into a plugin list"; exit 1 ;;
  esac
}

install() {
  [ -x "$plugin" ] || { say "$plugin is missing from the image"; exit 1; }
  cp "$plugin" "$bin_dir/.ferry-cni.tmp"
  chmod 0755 "$bin_dir/.ferry-cni.tmp"
  mv -f "$bin_dir/.ferry-cni.tmp" "$bin_dir/ferry-cni"
  say "installed $bin_dir/ferry-cni"

  # The network plugin may write its configuration after this pod starts (kind's kindnet
  # does): wait for it instead of failing the pod into a restart loop.
  tries=0
  conf=$(primary_conflist)
  while [ -z "$conf" ]; do
    tries=$((tries + 1))
    [ "$tries" -lt 60 ] || { say "no CNI network configuration in $net_dir after 120s (is the network plugin installed?)"; exit 1; }
    sleep 2
    conf=$(primary_conflist)
  done
  if jq -e '.plugins | map(.type) | index("ferry-cni")' "$conf" >/dev/null; then
    say "$conf already chains ferry-cni"
    return 0
  fi
  # agent_timeout_seconds bounds how long a pod's sandbox creation waits for the agent; no
  # cluster_state: without the agent, ferry-cni refuses pods (fail closed) instead of
  # starting them uncaptured.
  jq --arg socket "$socket" \
    '.plugins += [{"type": "ferry-cni", "agent_socket": $socket, "agent_timeout_seconds": 30}]' \
    "$conf" >"$conf.ferry.tmp"
  mv -f "$conf.ferry.tmp" "$conf"
  say "chained ferry-cni into $conf"
}

remove() {
  for conf in "$net_dir"/*.conflist; do
    [ -f "$conf" ] || continue
    if jq -e '.plugins | map(.type) | index("ferry-cni")' "$conf" >/dev/null; then
      jq '.plugins |= map(select(.type != "ferry-cni"))' "$conf" >"$conf.ferry.tmp"
      mv -f "$conf.ferry.tmp" "$conf"
      say "removed ferry-cni from $conf"
    fi
  done
  rm -f "$bin_dir/ferry-cni" "$bin_dir/.ferry-cni.tmp"
  say "removed $bin_dir/ferry-cni"
}

case "${1:-}" in
  install) install ;;
  remove) remove ;;
  *) say "usage: ferry-install-cni install|remove"; exit 2 ;;
esac
