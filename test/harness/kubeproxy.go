package harness

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// The real kube-proxy as a peer to compare magic-ip with: kube-controller-manager running only
// its EndpointSlice controller (so Services get EndpointSlices from the simulated pods), and one
// kube-proxy (iptables mode) inside each node's network namespace. Both are built from the same
// k8s.io/kubernetes version as the test control plane by hack/peer-assets.sh.

const (
	// ServiceCIDR is the Service ClusterIP range of the test API server: envtest starts
	// kube-apiserver with --service-cluster-ip-range=10.0.0.0/24 (controller-runtime
	// pkg/internal/testing/controlplane/apiserver.go, defaultArgs).
	ServiceCIDR = "10.0.0.0/24"
	// ClusterCIDR holds every node's pod CIDR (10.244.<i>.0/24): kube-proxy's --cluster-cidr, so
	// traffic from pods is not masqueraded.
	ClusterCIDR = "10.244.0.0/16"
	// serviceGateway is an address on the node uplink network that no host answers: the route
	// StartKubeProxy gives the Service range in a node, as a real node's default route would, so
	// that kube-proxy's filter-table REJECT and DROP rules (hooked in FORWARD) are reached, and a
	// packet that escapes every rule dies visibly (EHOSTUNREACH after ARP fails) instead of
	// leaving the test's namespaces.
	serviceGateway = underlayPrefix + "254"
)

// PeerAssetsDir is the directory holding kube-proxy and kube-controller-manager: assets (the
// control plane's directory, i.e. KUBEBUILDER_ASSETS) when they are there, or else the directory
// hack/peer-assets.sh builds them into (building first when missing: about 10 minutes cold).
func PeerAssetsDir(assets string) (string, error) {
	has := func(dir string) bool {
		for _, bin := range []string{"kube-proxy", "kube-controller-manager"} {
			if st, err := os.Stat(filepath.Join(dir, bin)); err != nil || st.IsDir() {
				return false
			}
		}
		return true
	}
	if assets == "" {
		assets = os.Getenv("KUBEBUILDER_ASSETS")
	}
	if assets != "" && has(assets) {
		return assets, nil
	}
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	dir, err := runAssetScript(root, "peer-assets.sh")
	if err != nil {
		return "", err
	}
	if !has(dir) {
		return "", fmt.Errorf("hack/peer-assets.sh printed %q, which lacks kube-proxy or kube-controller-manager", dir)
	}
	return dir, nil
}

// StartEndpointSliceController runs kube-controller-manager in the root namespace with only the
// EndpointSlice controller, against cp with the admin kubeconfig, and waits until its /healthz
// answers. Stopped in t.Cleanup.
func StartEndpointSliceController(t T, cp *ControlPlane) *Process {
	t.Helper()
	return StartControllerManager(t, cp, "endpointslice-controller")
}

// StartControllerManager runs kube-controller-manager in the root namespace with only the named
// controllers (e.g. "daemonset-controller"), against cp with the admin kubeconfig, and waits
// until its /healthz answers. Stopped in t.Cleanup.
func StartControllerManager(t T, cp *ControlPlane, controllers ...string) *Process {
	t.Helper()
	return startControllerManager(t, cp, nil, controllers...)
}

// startControllerManager is StartControllerManager with extra flags.
func startControllerManager(t T, cp *ControlPlane, extra []string, controllers ...string) *Process {
	t.Helper()
	dir, err := PeerAssetsDir(cp.AssetsDir)
	if err != nil {
		t.Fatalf("kube-controller-manager %v: %v", controllers, err)
	}
	port, err := FreePort()
	if err != nil {
		t.Fatalf("kube-controller-manager %v: %v", controllers, err)
	}
	p := StartHostProcess(t, "kube-controller-manager", filepath.Join(dir, "kube-controller-manager"), append([]string{
		"--kubeconfig=" + cp.Kubeconfig,
		"--controllers=" + strings.Join(controllers, ","),
		"--leader-elect=false",
		"--use-service-account-credentials=false",
		"--bind-address=127.0.0.1",
		fmt.Sprintf("--secure-port=%d", port),
	}, extra...)...)
	if err := waitHealthz(t, p, port); err != nil {
		t.Fatalf("kube-controller-manager: %v\n%s", err, tail(p.Output(), 30))
	}
	return p
}

// waitHealthz waits up to a minute for https://127.0.0.1:port/healthz of a control-plane
// component to answer 200 (its serving certificate is self-signed in memory; /healthz is always
// allowed).
func waitHealthz(t T, p *Process, port int) error {
	hc := &http.Client{Timeout: time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, DisableKeepAlives: true, //nolint:gosec // loopback, self-signed
	}}
	url := fmt.Sprintf("https://127.0.0.1:%d/healthz", port)
	return waitFor(t.Context(), p, 60*time.Second, func() (bool, error) {
		resp, err := hc.Get(url)
		if err != nil {
			return false, nil
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, nil
	})
}

// KubeProxy is a kube-proxy running inside a node's namespace.
type KubeProxy struct {
	*Process
	Node *Node
	// Args are the command-line flags it runs with.
	Args []string
	hc   *http.Client
}

// StartKubeProxy runs kube-proxy in iptables mode (StartKubeProxyMode: another) inside n's namespace, as the node's DaemonSet
// pod would (host network): the admin kubeconfig (the node's API forwarder listens on the same
// 127.0.0.1 port), --hostname-override=<node name> (the Node object carries its InternalIP),
// --cluster-cidr=10.244.0.0/16, and --conntrack-max-per-core=0 so that it leaves the host-global
// conntrack table size alone. Its health (:10256) and metrics (127.0.0.1:10249) ports are the
// defaults: each node namespace has its own. extra flags come last and win (e.g.
// --iptables-min-sync-period=0).
//
// Before starting it prepares the node as a real one is prepared for kube-proxy, for every peer
// that shares the node:
//   - net.ipv4.icmp_ratelimit=0: the per-namespace default (1000 ms) suppresses the ICMP errors
//     of REJECT rules after a burst, so a fast prober would see ~1 s silent drops instead of
//     refusals;
//   - net.bridge.bridge-nf-call-iptables=1 (needs br_netfilter): replies between two pods on
//     cni0 are bridged, and must cross conntrack to be un-NATed;
//   - a route for ServiceCIDR via an absent gateway on the uplink network (see serviceGateway).
//
// It returns once kube-proxy has written its rules (its first IPv4 sync is reported in its
// metrics). Stopped in t.Cleanup, or earlier with Stop (its rules stay, as on a real node).
func StartKubeProxy(t T, c *Cluster, n *Node, extra ...string) *KubeProxy {
	t.Helper()
	return StartKubeProxyMode(t, c, n, KubeProxyIptables, extra...)
}

// kube-proxy's --proxy-mode values StartKubeProxyMode runs.
const (
	KubeProxyIptables = "iptables"
	// KubeProxyNftables writes table ip kube-proxy (and ip6 kube-proxy) through the nft binary
	// (knftables: nft v1.0.1 or later; Debian's nftables package, installed by hack/prereqs.sh).
	KubeProxyNftables = "nftables"
)

// StartKubeProxyMode is StartKubeProxy with kube-proxy in mode (KubeProxyIptables or
// KubeProxyNftables).
func StartKubeProxyMode(t T, c *Cluster, n *Node, mode string, extra ...string) *KubeProxy {
	t.Helper()
	dir, err := PeerAssetsDir(c.CP.AssetsDir)
	if err != nil {
		t.Fatalf("kube-proxy: %v", err)
	}
	if mode == KubeProxyNftables {
		if _, err := exec.LookPath("nft"); err != nil {
			t.Fatalf("kube-proxy --proxy-mode=nftables runs the nft binary: %v (make prereqs installs Debian's nftables)", err)
		}
	}
	if err := PrepareNodeForPeers(t.Context(), n); err != nil {
		t.Fatalf("kube-proxy on %s: %v", n.Name, err)
	}
	args := append([]string{
		"--kubeconfig=" + c.CP.Kubeconfig,
		"--hostname-override=" + n.Name,
		"--proxy-mode=" + mode,
		"--cluster-cidr=" + ClusterCIDR,
		"--conntrack-max-per-core=0",
	}, extra...)
	start := time.Now()
	p := n.Netns.StartProcess(t, "kube-proxy "+n.Name, filepath.Join(dir, "kube-proxy"), args...)
	k := &KubeProxy{Process: p, Node: n, Args: args, hc: n.Netns.HTTPClient(time.Second)}
	if _, err := k.WaitSync(t.Context(), start, 60*time.Second); err != nil {
		t.Fatalf("kube-proxy on %s: %v\n%s", n.Name, err, tail(p.Output(), 30))
	}
	return k
}

// PrepareNodeForPeers applies StartKubeProxy's node preparation (ICMP rate limit off,
// bridge-nf-call-iptables on, a route for the Service range) on its own. Idempotent.
func PrepareNodeForPeers(ctx context.Context, n *Node) error {
	for _, kv := range [][2]string{{"net.ipv4.icmp_ratelimit", "0"}, {"net.bridge.bridge-nf-call-iptables", "1"}} {
		if err := n.Netns.Sysctl(kv[0], kv[1]); err != nil {
			return fmt.Errorf("%w (br_netfilter loaded?)", err)
		}
	}
	_, err := n.Netns.Run(ctx, "ip", "route", "replace", ServiceCIDR, "via", serviceGateway, "dev", UplinkName)
	return err
}

// LastSync is when kube-proxy last finished writing its IPv4 rules (its
// kubeproxy_sync_proxy_rules_last_timestamp_seconds); zero before the first sync.
func (k *KubeProxy) LastSync(ctx context.Context) (time.Time, error) {
	v, err := k.Metric(ctx, "kubeproxy_sync_proxy_rules_last_timestamp_seconds", `ip_family="IPv4"`)
	if err != nil || v == 0 {
		return time.Time{}, err
	}
	sec, frac := math.Modf(v)
	return time.Unix(int64(sec), int64(frac*1e9)), nil
}

// WaitSync waits until kube-proxy has finished a sync after the given time and returns when.
func (k *KubeProxy) WaitSync(ctx context.Context, after time.Time, timeout time.Duration) (time.Time, error) {
	var last time.Time
	err := waitFor(ctx, k.Process, timeout, func() (bool, error) {
		var err error
		last, err = k.LastSync(ctx)
		if err != nil {
			return false, nil // metrics not served yet
		}
		return last.After(after), nil
	})
	return last, err
}

// Metric reads one sample of kube-proxy's metrics: the first line of name whose labels contain
// labels (e.g. `ip_family="IPv4"`; empty matches any).
func (k *KubeProxy) Metric(ctx context.Context, name, labels string) (float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://127.0.0.1:10249/metrics", nil)
	if err != nil {
		return 0, err
	}
	resp, err := k.hc.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("kube-proxy metrics: %s", resp.Status)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name) {
			continue
		}
		rest := line[len(name):]
		if rest == "" || (rest[0] != ' ' && rest[0] != '{') {
			continue // a longer metric name
		}
		if !strings.Contains(rest, labels) {
			continue
		}
		f := strings.Fields(rest[strings.LastIndex(rest, "}")+1:])
		if len(f) == 0 {
			continue
		}
		return strconv.ParseFloat(f[0], 64)
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("kube-proxy metrics: no %s{%s}", name, labels)
}

// waitFor polls cond every 20 ms until it holds, the process exits, ctx ends or timeout passes.
func waitFor(ctx context.Context, p *Process, timeout time.Duration, cond func() (bool, error)) error {
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		ok, err := cond()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		if p.Exited() {
			return fmt.Errorf("%s exited: %v", p.Name, p.err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not ready after %s", p.Name, timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}
