#!/bin/sh
# Starts one harness node's containerd and kubelet (test/harness/realnode.go). Run as
#   nsenter --net=/run/netns/<node> unshare --mount --uts --propagation slave /bin/sh start.sh
# so that every mount made here (and by containerd, runc and the kubelet) stays in the node's
# private mount namespace and vanishes with it.
set -eu
# First, before anything forks: every process of the node descends from this one, so the
# harness finds them all (shims and containers included) in this cgroup's subtree.
echo $$ > '{{.TrackCgroup}}/cgroup.procs'
hostname '{{.Name}}'
# /var/lib/cni and /var/log/{pods,containers} cannot be configured elsewhere.
mount --bind '{{.Dir}}/var-lib' /var/lib
mount --bind '{{.Dir}}/var-log' /var/log
'{{.Assets}}/containerd' --config '{{.Dir}}/etc/containerd.toml' >'{{.Dir}}/containerd.log' 2>&1 &
i=0
while [ ! -S '{{.Dir}}/run/containerd.sock' ]; do
	i=$((i + 1))
	if [ $i -gt 600 ] || ! kill -0 $! 2>/dev/null; then
		echo "containerd did not start: see {{.Dir}}/containerd.log" >&2
		exit 1
	fi
	sleep 0.1
done
exec '{{.Assets}}/kubelet' --config '{{.Dir}}/etc/kubelet.yaml' --kubeconfig '{{.Kubeconfig}}' \
	--root-dir '{{.Dir}}/kubelet' --cert-dir '{{.Dir}}/kubelet/pki' \
	--hostname-override '{{.Name}}' --node-ip '{{.IP}}' --v=1 >'{{.Dir}}/kubelet.log' 2>&1
