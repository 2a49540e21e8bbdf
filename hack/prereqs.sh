#!/usr/bin/env bash
# Installs the system packages the tests and the demo need, when missing (Debian/Ubuntu, as root).
set -euo pipefail
need=()
command -v ip >/dev/null || need+=(iproute2)
command -v iptables-restore >/dev/null || need+=(iptables)
command -v conntrack >/dev/null || need+=(conntrack)
# kube-proxy --proxy-mode=nftables (test/harness/kubeproxy.go) runs the nft binary (knftables
# wants v1.0.1 or later; bookworm ships 1.0.6). The agent itself needs none: it uses netlink.
command -v nft >/dev/null || need+=(nftables)
command -v make >/dev/null || need+=(make)
# Real nodes (test/harness/realnode.go): Debian's runc runs their containers; nsenter and unshare
# start them in the node's network namespace and a private mount namespace.
[[ -x /usr/sbin/runc ]] || need+=(runc)
command -v nsenter >/dev/null && command -v unshare >/dev/null || need+=(util-linux)
# The images (hack/images.sh): buildah builds them, debootstrap makes the local base stand-ins.
command -v buildah >/dev/null || need+=(buildah)
command -v debootstrap >/dev/null || need+=(debootstrap)
# The benchmarks (test/bench/kernelprofile_test.go): perf profiles a new connection's CPU.
command -v perf >/dev/null || need+=(linux-perf)
[[ ${#need[@]} -eq 0 ]] && exit 0
if [[ $(id -u) -ne 0 ]]; then
	echo "prereqs: missing ${need[*]}; install them as root: apt-get install -y ${need[*]}" >&2
	exit 0 # tests that need them skip (or fail under CI) with the reason
fi
if ! command -v apt-get >/dev/null; then
	echo "prereqs: missing ${need[*]} and no apt-get: install them with your package manager" >&2
	exit 1
fi
echo "prereqs: installing ${need[*]}" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
