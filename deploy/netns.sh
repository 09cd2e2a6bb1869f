#!/usr/bin/env bash
# Runs every node of a cluster config on this host, each in its own network
# namespace, so that the nodes talk over real (virtual) Ethernet as they would
# between machines: no shared loopback and no shortcut through 127.0.0.1.
#
#   sudo deploy/netns.sh --config config/examples/three-nodes-netns.toml \
#        [--troupe build/troupe] [--prefix-len 24] [--host-address 10.77.0.254] [--keep-going]
#
# One bridge, and per node a namespace and a veth pair: the host end joins the
# bridge, the other end becomes eth0 in the namespace with the node's address
# from the config (/prefix-len). --host-address also puts the host on the
# bridge, e.g. to reach the gateway with curl. Each node runs as
# `troupe node --config FILE --name NODE` with its output prefixed "[NODE] ".
# Ctrl-C or SIGTERM stops the nodes (SIGTERM, then SIGKILL after 10 s); if a
# node dies, the others are stopped and the script exits 1 (with --keep-going
# they keep running, as a cluster that outlives a node, until a signal; the
# script still exits 1). Namespaces, veths and the bridge are removed on every
# exit. Needs root and iproute2; node addresses must be IPv4 and not loopback
# (each namespace has its own lo).
# Names carry this script's pid, so several runs can coexist.
set -euo pipefail

die() { echo "netns.sh: $*" >&2; exit 2; }

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
config='' troupe='' prefix=24 host_address='' stop_timeout=10 keep_going=0 failed=0
while (($#)); do
  case $1 in
    --config) config=${2:?}; shift 2 ;;
    --troupe) troupe=${2:?}; shift 2 ;;
    --prefix-len) prefix=${2:?}; shift 2 ;;
    --host-address) host_address=${2:?}; shift 2 ;;
    --keep-going) keep_going=1; shift ;;
    -h|--help) sed -n '2,20p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
[[ -n $config ]] || die "--config FILE is required"
[[ -r $config ]] || die "cannot read $config"
config=$(realpath "$config")
if [[ -z $troupe ]]; then
  if [[ -x $here/../build/troupe ]]; then troupe=$here/../build/troupe; else troupe=$(command -v troupe || true); fi
fi
[[ -n $troupe && -x $troupe ]] || die "no troupe binary (build it, or pass --troupe PATH)"
troupe=$(realpath "$troupe")
[[ $(id -u) == 0 ]] || die "needs root (network namespaces, veth pairs and a bridge)"
command -v ip >/dev/null || die "needs iproute2 (ip)"
if ! [[ $prefix =~ ^[0-9]+$ ]] || ((prefix < 8 || prefix > 30)); then die "--prefix-len must be 8..30"; fi

# The nodes, checked by troupe itself ("NAME ADDRESS PORT" per line).
listing=$("$troupe" launch --config "$config" --list) || exit 2
names=() addrs=()
while read -r name addr _port; do
  [[ $addr =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ ]] ||
    die "node $name: address '$addr' must be an IPv4 address: it is given to the node's interface"
  [[ $addr != 127.* ]] ||
    die "node $name: $addr is a loopback address, and every namespace has its own loopback; give the nodes addresses of one subnet (see config/examples/three-nodes-netns.toml)"
  names+=("$name") addrs+=("$addr")
done <<<"$listing"

tag=$$
bridge="trbr$tag"
namespaces=() pids=()
stopping=0

stop_nodes() {
  local pid deadline=$((SECONDS + stop_timeout)) status=0
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      echo "netns.sh: pid $pid did not stop within ${stop_timeout} s; killing it" >&2
      kill -KILL "$pid" 2>/dev/null || true
      status=1
    fi
    wait "$pid" 2>/dev/null || { local rc=$?; ((rc == 0 || rc == 143)) || status=1; }
  done
  pids=()
  return $status
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  ((${#pids[@]})) && { stop_nodes || rc=1; }
  for ns in "${namespaces[@]}"; do ip netns del "$ns" 2>/dev/null || true; done  # takes its veth pair along
  ip link del "$bridge" 2>/dev/null || true
  wait 2>/dev/null || true  # the output prefixers
  exit "$rc"
}
on_signal() {
  stopping=1
  echo "netns.sh: $1, stopping ${#pids[@]} node(s)" >&2
  local rc=$failed
  stop_nodes || rc=1
  exit $rc
}
trap cleanup EXIT
trap 'on_signal SIGINT' INT
trap 'on_signal SIGTERM' TERM

if [[ -r /proc/sys/net/bridge/bridge-nf-call-iptables && $(</proc/sys/net/bridge/bridge-nf-call-iptables) == 1 ]]; then
  echo "netns.sh: note: bridged traffic passes iptables here (br_netfilter); a FORWARD policy of DROP (e.g. Docker's) blocks the nodes" >&2
fi
ip link add "$bridge" type bridge
ip link set "$bridge" up
[[ -z $host_address ]] || ip addr add "$host_address/$prefix" dev "$bridge"

for i in "${!names[@]}"; do
  ns="troupe-$tag-${names[$i]}"
  host_end="trv$tag-$i" node_end="trp$tag-$i"  # interface names: at most 15 characters
  ip netns add "$ns"
  namespaces+=("$ns")
  ip link add "$host_end" type veth peer name "$node_end"
  ip link set "$host_end" master "$bridge" up
  ip link set "$node_end" netns "$ns"
  ip -n "$ns" link set "$node_end" name eth0
  ip -n "$ns" addr add "${addrs[$i]}/$prefix" dev eth0
  ip -n "$ns" link set lo up
  ip -n "$ns" link set eth0 up
done

for i in "${!names[@]}"; do
  name=${names[$i]} ns=${namespaces[$i]}
  # `ip netns exec` execs troupe, so $! is the node's pid.
  ip netns exec "$ns" "$troupe" node --config "$config" --name "$name" \
    > >(sed -u "s/^/[$name] /") 2> >(sed -u "s/^/[$name] /" >&2) &
  pids+=($!)
  echo "netns.sh: node $name (pid $!) in netns $ns at ${addrs[$i]}" >&2
done

# Until a signal (the traps exit) or a node ends on its own.
while true; do
  set +e
  wait -n -p ended "${pids[@]}"
  rc=$?
  set -e
  ((stopping)) && continue
  [[ -n ${ended:-} ]] || continue  # a signal interrupted wait; its trap has run
  for i in "${!pids[@]}"; do
    if [[ ${pids[$i]} == "$ended" ]]; then
      if ((keep_going)); then
        echo "netns.sh: node ${names[$i]} (pid $ended) exited with status $rc; the others keep running (--keep-going)" >&2
      else
        echo "netns.sh: node ${names[$i]} (pid $ended) exited with status $rc; stopping the others" >&2
      fi
      unset 'pids[i]' 'names[i]'
    fi
  done
  pids=("${pids[@]}") names=("${names[@]}")
  failed=1
  ((keep_going && ${#pids[@]})) && continue
  stop_nodes || true
  exit 1
done
