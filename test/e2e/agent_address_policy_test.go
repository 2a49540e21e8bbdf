package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	eventsv1 "k8s.io/api/events/v1"

	"github.com/magic-ip/magic-ip/test/harness"
)

// TestAgentAllowedAddressRanges: a MagicIP whose address is outside the agent's default
// --allowed-address-ranges (here a ClusterIP-like 10.96.0.50, or with IPv6 2001:db8::50: the API
// keeps spec.ipv6Address inside fd00::/8 and fe80::/10, so an IPv6-only MagicIP, its spec.address
// alone) is not programmed — no address on
// the host interface, no rule — and a Warning Event and the problems metric say why; the MagicIP
// beside it is served as before.
func TestAgentAllowedAddressRanges(t *testing.T) { forEachBackend(t, testAgentAllowedAddressRanges) }

func testAgentAllowedAddressRanges(t *testing.T, b backend) {
	e := newOneNode(t, b, "--metrics-bind-address", "127.0.0.1:9402")
	p := addProducer(t, e.c, e.node, "dd-1", harness.PodOptions{})
	ctx := t.Context()
	outside, addr := datadogMagicIP("cluster-ip"), "10.96.0.50"
	if b.v6 {
		addr = "2001:db8::50"
	}
	outside.Spec.Address = addr
	if err := e.c.CP.Client.Create(ctx, outside); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "served", b.onlyAnswers(e.consumer.Netns, p.Name))
	eventually(t, 10*time.Second, "refusal reported", wantAgentEvent(e.c, "cluster-ip", "Invalid",
		"address "+addr+" is outside the agent's --allowed-address-ranges [169.254.0.0/16 fe80::/10 fd00::/8]: not programmed"))
	problem := `magic_ip_agent_magicip_problems{magicip="cluster-ip",reason="Invalid"}`
	if v, err := metric(ctx, e.node, problem); err != nil || v != 1 {
		t.Errorf("%s = %v (err %v), want 1", problem, v, err)
	}
	out, err := nodeState(ctx, b.view(), e.node.Netns)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out, addr) {
		t.Errorf("%s is programmed on the node:\n%s", addr, out)
	}
}

// wantAgentEvent is a condition: an Event about MagicIP regarding with reason and a note containing
// text exists.
func wantAgentEvent(c *harness.Cluster, regarding, reason, text string) func(context.Context) error {
	return func(ctx context.Context) error {
		var list eventsv1.EventList
		if err := c.CP.Client.List(ctx, &list); err != nil {
			return err
		}
		for _, ev := range list.Items {
			if ev.Regarding.Name == regarding && ev.Reason == reason && strings.Contains(ev.Note, text) {
				return nil
			}
		}
		return fmt.Errorf("no %s event for %s mentioning %q among %d events", reason, regarding, text, len(list.Items))
	}
}
