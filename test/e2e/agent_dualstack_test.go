package e2e

import (
	"context"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/magic-ip/magic-ip/api/v1alpha1"
	"github.com/magic-ip/magic-ip/test/harness"
)

// TestAgentDualStackServesIPv4: a dual-stack MagicIP (spec.ipv6Address set) is served on its IPv4
// address as before, while the agent, which programs IPv4 only for now, reports the IPv6 address in
// the node's record as not programmed (AddressFamilyNotSupported) rather than failing the MagicIP;
// the IPv6 address is not put on the node, and the record stays as it is over later syncs (no
// flapping).
func TestAgentDualStackServesIPv4(t *testing.T) { forEachDatapath(t, testAgentDualStackServesIPv4) }

func testAgentDualStackServesIPv4(t *testing.T, dp []string) {
	const addr6 = "fd00::a9fe:d2d2"
	cp := harness.StartControlPlane(t)
	c := harness.NewCluster(t, cp, harness.ClusterOptions{Nodes: 1})
	node, ctx := c.Nodes[0], t.Context()
	consumer := c.AddPod(node, "app", "consumer", nil, harness.PodOptions{})
	dual := datadogMagicIP("datadog")
	dual.Spec.IPv6Address = addr6
	if err := cp.Client.Create(ctx, dual); err != nil {
		t.Fatal(err)
	}
	startAgent(t, c, node, append([]string{"--metrics-bind-address", "127.0.0.1:9402"}, dp...)...)
	p := addProducer(t, c, node, "dd-1", harness.PodOptions{})
	eventually(t, 10*time.Second, "IPv4 served", onlyAnswers(consumer.Netns, p.Name))

	want := []v1alpha1.UnprogrammedAddress{{Address: addr6, Reason: v1alpha1.ReasonAddressFamilyNotSupported,
		Message: "address " + addr6 + " is IPv6: " + v1alpha1.ErrAddressFamilyNotSupported.Error() + "; the IPv4 address " + magicAddr + " is served"}}
	rec := &v1alpha1.MagicIPNode{}
	eventually(t, 10*time.Second, "IPv6 address reported", func(ctx context.Context) error {
		if err := cp.Client.Get(ctx, client.ObjectKey{Name: node.Name}, rec); err != nil {
			return err
		}
		e := rec.Find("datadog")
		if e == nil || !e.Programmed || e.Reason != v1alpha1.ReasonProgrammed || len(e.Producers) != 1 || !reflect.DeepEqual(e.UnprogrammedAddresses, want) {
			return fmt.Errorf("entry %+v, want programmed with producer dd-1 and unprogrammedAddresses %+v", e, want)
		}
		return nil
	})
	version := rec.ResourceVersion
	waitSyncs(t, node, 3) // with the 2 s resync: full syncs too
	if err := cp.Client.Get(ctx, client.ObjectKey{Name: node.Name}, rec); err != nil {
		t.Fatal(err)
	}
	if rec.ResourceVersion != version {
		t.Errorf("record rewritten over 3 idle syncs (resourceVersion %s -> %s): %+v", version, rec.ResourceVersion, rec.MagicIPs)
	}
	eventually(t, 5*time.Second, "IPv4 still served", onlyAnswers(consumer.Netns, p.Name))
	out, err := node.Netns.Run(ctx, "ip", "-o", "addr", "show")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out, addr6) || !strings.Contains(out, magicAddr) {
		t.Errorf("node addresses: want %s and not %s:\n%s", magicAddr, addr6, out)
	}
}
