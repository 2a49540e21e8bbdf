package e2e

import (
	"context"
	"errors"
	"net"
	"strconv"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/magic-ip/magic-ip/api/v1alpha1"
	"github.com/magic-ip/magic-ip/test/harness"
)

const (
	magicAddr = "169.254.210.210"
	apmPort   = 8126
	statsPort = 8125
)

// startAgent runs the real magic-ip-agent inside node's namespace, with cni0 as host interface.
func startAgent(t *testing.T, c *harness.Cluster, n *harness.Node, extra ...string) *harness.Process {
	t.Helper()
	return harness.StartAgent(t, c, n, agentBin, extra...)
}

// datadogMagicIP is the example: 169.254.210.210, 8126/TCP + 8125/UDP, producers app=dd in
// namespace datadog.
func datadogMagicIP(name string) *v1alpha1.MagicIP {
	return &v1alpha1.MagicIP{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: v1alpha1.MagicIPSpec{
			Address: magicAddr,
			Ports: []v1alpha1.MagicIPPort{
				{Name: "apm", Port: apmPort, Protocol: v1alpha1.ProtocolTCP},
				{Name: "dogstatsd", Port: statsPort, Protocol: v1alpha1.ProtocolUDP},
			},
			Producer: v1alpha1.Producer{Namespace: "datadog", Selector: v1alpha1.LabelSelector{MatchLabels: map[string]string{"app": "dd"}}},
		},
	}
}

// addProducer adds a Ready datadog producer pod on n serving TCP 8126 and UDP 8125.
func addProducer(t *testing.T, c *harness.Cluster, n *harness.Node, name string, opts harness.PodOptions) *harness.Pod {
	t.Helper()
	p := c.AddPod(n, "datadog", name, map[string]string{"app": "dd"}, opts)
	p.Netns.ServeTCP(t, apmPort, p.Name)
	p.Netns.ServeUDP(t, statsPort, p.Name)
	return p
}

// tcpOutcome dials addr:port from ns with a 1 s budget: the answering pod's name, or the outcome
// ("refused", "timeout", "unreachable", ...).
func tcpOutcome(ctx context.Context, ns *harness.Netns, addr string, port int) string {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	name, err := ns.DialTCP(ctx, net.JoinHostPort(addr, strconv.Itoa(port)))
	if err != nil {
		return harness.Outcome(err)
	}
	return name
}

func udpOutcome(ctx context.Context, ns *harness.Netns, addr string, port int) string {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	name, err := ns.ExchangeUDP(ctx, net.JoinHostPort(addr, strconv.Itoa(port)))
	if err != nil {
		return harness.Outcome(err)
	}
	return name
}

// eventually polls cond every 10 ms until it returns nil or timeout passes, then fails with its
// last error.
func eventually(t *testing.T, timeout time.Duration, what string, cond func(ctx context.Context) error) {
	t.Helper()
	var last error
	err := wait.PollUntilContextTimeout(t.Context(), 10*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		err := cond(ctx)
		if err != nil && ctx.Err() != nil && last != nil {
			return false, nil // cut short by the deadline: the previous answer says more
		}
		last = err
		return last == nil, nil
	})
	if err != nil {
		t.Fatalf("%s: not true within %s: %v", what, timeout, errors.Join(last, err))
	}
}

// kept sends one datagram on a kept UDP socket and returns the answer or the outcome, waiting at
// most timeout.
func kept(ctx context.Context, u *harness.UDPClient, timeout time.Duration) string {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	got, err := u.Exchange(ctx)
	if err != nil {
		return harness.Outcome(err)
	}
	return got
}
