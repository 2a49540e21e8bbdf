package harness

import (
	"context"
	"io"
	"net/http"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
)

// StartAgent runs the magic-ip-agent binary inside node's namespace the way the DaemonSet runs it
// on a node: cni0 (routed nodes: HostBridge) as host interface, the node's uplink as external interface (from --node-ip),
// the agent service account's kubeconfig (shipped RBAC) through the node's API forwarder, health on 127.0.0.1:9403 in the node,
// metrics off, a 2 s resync. extra flags come last and win.
func StartAgent(t T, c *Cluster, n *Node, bin string, extra ...string) *Process {
	t.Helper()
	return StartAgentBare(t, c, n, bin, append([]string{"--node-ip", n.IP.String()}, extra...)...)
}

// StartAgentBare runs the agent as StartAgent does but without --node-ip: with no extra flags, no
// local-detection flag at all, so the agent takes the node's addresses from its Node object.
func StartAgentBare(t T, c *Cluster, n *Node, bin string, extra ...string) *Process {
	t.Helper()
	args := append([]string{
		"--node-name", n.Name, "--kubeconfig", c.CP.AgentKubeconfig, "--host-interface", n.HostInterface(),
		"--metrics-bind-address", "0", "--health-probe-bind-address", "127.0.0.1:9403",
		"--resync-period", "2s", "-v", "2",
	}, extra...)
	p := n.Netns.StartProcess(t, "agent "+n.Name, bin, args...)
	p.FailOnForbidden(t)
	return p
}

// WaitAgentReady polls the agent's /readyz (127.0.0.1:9403 inside ns, as StartAgent configures
// it) every 20 ms until it answers 200, ctx ends or timeout passes.
func WaitAgentReady(ctx context.Context, ns *Netns, timeout time.Duration) error {
	hc := ns.HTTPClient(time.Second)
	return wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, timeout, true, func(context.Context) (bool, error) {
		resp, err := hc.Get("http://127.0.0.1:9403/readyz")
		if err != nil {
			return false, nil
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, nil
	})
}
