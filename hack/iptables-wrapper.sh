#!/bin/sh
# iptables-wrapper: the agent image's entrypoint. It picks the iptables mode the node already
# uses (nft or legacy), makes plain `iptables`, `iptables-save`, `iptables-restore` and the
# ip6tables ones run that mode, then execs the agent with the container's arguments.
#
# A node whose rules (kubelet's, kube-proxy's, the CNI's) live in one mode must get ours in the
# same mode: rules in the other one would be evaluated separately, or not be seen by
# iptables-save at all. The image holds both (Debian's iptables package) and decides at start-up.
#
# The agent's root filesystem is read-only, so `update-alternatives` (which writes under
# /etc/alternatives) cannot be used: the choice is made with symlinks in a writable directory
# (the DaemonSet mounts an emptyDir at /tmp) that is put first on PATH.
#
# Environment (the defaults are what the image needs; tests override them):
#   MAGIC_IP_IPTABLES_BIN_DIR  where the symlinks go (default /tmp/iptables-bin)
#   MAGIC_IP_IPTABLES_MODE     nft or legacy: skip detection
#   MAGIC_IP_AGENT             the program to exec (default /magic-ip-agent)
set -eu

bin_dir="${MAGIC_IP_IPTABLES_BIN_DIR:-/tmp/iptables-bin}"
agent="${MAGIC_IP_AGENT:-/magic-ip-agent}"

log() { echo "iptables-wrapper: $*" >&2; }

# rules MODE: how many rules (lines starting with "-") iptables and ip6tables hold in MODE. A
# mode whose tools are missing, or whose kernel side is absent, counts as 0.
rules() {
	n=0
	for family in iptables ip6tables; do
		save="${family}-$1-save"
		command -v "$save" >/dev/null 2>&1 || continue
		c=$("$save" 2>/dev/null | grep -c '^-' || true)
		n=$((n + ${c:-0}))
	done
	echo "$n"
}

# hint MODE: succeeds when the kubelet's marker chains exist in MODE. The kubelet creates
# KUBE-IPTABLES-HINT (and KUBE-KUBELET-CANARY) in the mode it uses, so they are the best signal
# on a node whose other rules have not been written yet.
hint() {
	save="iptables-$1-save"
	command -v "$save" >/dev/null 2>&1 || return 1
	"$save" -t mangle 2>/dev/null | grep -qE '^:(KUBE-IPTABLES-HINT|KUBE-KUBELET-CANARY) '
}

mode="${MAGIC_IP_IPTABLES_MODE:-}"
why="set by MAGIC_IP_IPTABLES_MODE"
if [ -z "$mode" ]; then
	if hint nft; then
		mode=nft why="kubelet's KUBE-IPTABLES-HINT chain is in nft"
	elif hint legacy; then
		mode=legacy why="kubelet's KUBE-IPTABLES-HINT chain is in legacy"
	else
		legacy=$(rules legacy)
		nft=$(rules nft)
		if [ "$legacy" -gt "$nft" ]; then
			mode=legacy
		else
			mode=nft
		fi
		why="rules: legacy $legacy, nft $nft"
	fi
fi
case "$mode" in
nft | legacy) ;;
*)
	log "unknown mode '$mode' (want nft or legacy)"
	exit 1
	;;
esac

mkdir -p "$bin_dir"
linked=0
for family in iptables ip6tables; do
	for suffix in "" -save -restore; do
		target=$(command -v "${family}-${mode}${suffix}" 2>/dev/null) || continue
		ln -sf "$target" "$bin_dir/${family}${suffix}"
		linked=$((linked + 1))
	done
done
if ! [ -x "$bin_dir/iptables" ] || ! [ -x "$bin_dir/iptables-save" ] || ! [ -x "$bin_dir/iptables-restore" ]; then
	log "iptables-${mode}, iptables-${mode}-save or iptables-${mode}-restore not found on PATH ($PATH)"
	exit 1
fi
PATH="$bin_dir:$PATH"
export PATH
log "using iptables-$mode ($why); $linked commands linked in $bin_dir"
exec "$agent" "$@"
