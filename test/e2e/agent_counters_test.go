package e2e

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"testing"
	"time"

	gnft "github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"

	"github.com/magic-ip/magic-ip/agent"
	"github.com/magic-ip/magic-ip/agent/nftables"
	"github.com/magic-ip/magic-ip/api/v1alpha1"
	"github.com/magic-ip/magic-ip/test/harness"
)

// noProducer names one series of magic_ip_agent_no_producer_connections_total as /metrics prints
// it (labels in name order).
func noProducer(magicIP, port, protocol, action string) string {
	return fmt.Sprintf(`magic_ip_agent_no_producer_connections_total{action=%q,magicip=%q,port=%q,protocol=%q}`, action, magicIP, port, protocol)
}

// wantMetric is a condition: the agent of n reports series at want.
func wantMetric(n *harness.Node, series string, want float64) func(context.Context) error {
	return func(ctx context.Context) error {
		if v, err := metric(ctx, n, series); err != nil || v != want {
			return fmt.Errorf("%s = %v (err %v), want %v", series, v, err, want)
		}
		return nil
	}
}

// wantNoMetric is a condition: the agent of n no longer reports series.
func wantNoMetric(n *harness.Node, series string) func(context.Context) error {
	return func(ctx context.Context) error {
		if v, err := metric(ctx, n, series); err == nil {
			return fmt.Errorf("%s still reported (%v)", series, v)
		}
		return nil
	}
}

// dialN makes n connections to port from the consumer, each with budget, and fails unless every
// one ends with want.
func dialN(t *testing.T, e *oneNode, n int, protocol string, port int, budget time.Duration, want string) {
	t.Helper()
	for i := range n {
		ctx, cancel := context.WithTimeout(t.Context(), budget)
		outcome := e.b.tcp
		if protocol == "UDP" {
			outcome = e.b.udp
		}
		got := outcome(ctx, e.consumer.Netns, port)
		cancel()
		if got != want {
			t.Fatalf("%s connection %d of %d to port %d: %q, want %q", protocol, i+1, n, port, got, want)
		}
	}
}

// kernelCount is the packet counter of the verdict rule of magicIP:port in the node's kernel, in
// the rules of b's datapath and family.
func kernelCount(t *testing.T, n *harness.Node, b backend, key string) int {
	t.Helper()
	if b.datapath == agent.DatapathNftables {
		return nftKernelCount(t, n, key)
	}
	out, err := n.Netns.Run(t.Context(), b.iptables(), "-t", "filter", "-v", "-S", "MAGIC-IP-INPUT")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(regexp.QuoteMeta(key+`: not redirected"`) + ` -c (\d+) `).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no verdict rule for %s in\n%s", key, out)
	}
	c, _ := strconv.Atoi(m[1])
	return c
}

// nftKernelCount is the packet counter of the verdict rule of key in chain input of our nftables
// table, read over netlink.
func nftKernelCount(t *testing.T, n *harness.Node, key string) int {
	t.Helper()
	rules, err := nftConnT(t, n.Netns).GetRules(ourTable, &gnft.Chain{Name: "input", Table: ourTable})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rules {
		if com, _ := userdata.GetString(r.UserData, userdata.TypeComment); com != key+": not redirected" {
			continue
		}
		for _, e := range r.Exprs {
			if c, ok := e.(*expr.Counter); ok {
				return int(c.Packets)
			}
		}
	}
	t.Fatalf("no verdict rule with a counter for %s in table inet %s", key, nftables.TableName)
	return 0
}

// TestAgentNoProducerCounters: a consumer connecting N times to a MagicIP without a producer on
// its node is counted N times per port, by action, on the agent's /metrics: refused (Reject: TCP
// reset, ICMP port unreachable), then dropped (Drop). Another MagicIP appearing rewrites the
// verdict chain, which sets the kernel's counters back to 0: the metric keeps what it counted.
// A MagicIP that goes away takes its series along.
func TestAgentNoProducerCounters(t *testing.T) { forEachBackend(t, testNoProducerCounters) }

func testNoProducerCounters(t *testing.T, b backend) {
	const n = 5
	e := newOneNode(t, b, "--metrics-bind-address", "127.0.0.1:9402", "--counters-min-interval", "1s")
	cp := e.c.CP
	// Each UDP refusal is an ICMP error to the same consumer: lift the rate limit (see TestAgentUDPSwitch).
	b.liftICMPRateLimit(t, e.node.Netns)
	apm, stats := noProducer("datadog", "apm", "TCP", "refused"), noProducer("datadog", "dogstatsd", "UDP", "refused")
	eventually(t, 10*time.Second, "series at 0 once the rules are written", func(ctx context.Context) error {
		return errors.Join(wantMetric(e.node, apm, 0)(ctx), wantMetric(e.node, stats, 0)(ctx))
	})
	dialN(t, e, n, "TCP", apmPort, time.Second, "refused")
	dialN(t, e, n, "UDP", statsPort, time.Second, "refused")
	eventually(t, 5*time.Second, "refused connections counted", func(ctx context.Context) error {
		return errors.Join(wantMetric(e.node, apm, n)(ctx), wantMetric(e.node, stats, n)(ctx))
	})

	// N more, not scraped yet when another MagicIP makes the agent rewrite the verdict chain.
	dialN(t, e, n, "TCP", apmPort, time.Second, "refused")
	other := b.at(datadogMagicIP("other"), 211)
	other.Spec.Ports = other.Spec.Ports[:1]
	if err := cp.Client.Create(t.Context(), other); err != nil {
		t.Fatal(err)
	}
	otherSeries := noProducer("other", "apm", "TCP", "refused")
	eventually(t, 10*time.Second, "the other MagicIP's series", wantMetric(e.node, otherSeries, 0))
	// The series comes with the first family's rewrite; with IPv6, ip6tables is rewritten right
	// after iptables, in the same sync: wait for this family's rewrite.
	eventually(t, 5*time.Second, "the kernel's counter of datadog:apm reset by the rewrite", func(context.Context) error {
		if c := kernelCount(t, e.node, b, "datadog:apm"); c != 0 {
			return fmt.Errorf("the kernel's counter of datadog:apm is %d, want 0 (reset)", c)
		}
		return nil
	})
	eventually(t, 5*time.Second, "connections made before the rewrite counted", wantMetric(e.node, apm, 2*n))
	dialN(t, e, n, "TCP", apmPort, time.Second, "refused")
	eventually(t, 5*time.Second, "connections made after the rewrite counted", wantMetric(e.node, apm, 3*n))

	setWhenNoProducer(t, cp, "datadog", v1alpha1.Drop)
	apmDropped, statsDropped := noProducer("datadog", "apm", "TCP", "dropped"), noProducer("datadog", "dogstatsd", "UDP", "dropped")
	eventually(t, 10*time.Second, "dropped series replace the refused ones", func(ctx context.Context) error {
		return errors.Join(wantMetric(e.node, apmDropped, 0)(ctx), wantMetric(e.node, statsDropped, 0)(ctx),
			wantNoMetric(e.node, apm)(ctx), wantNoMetric(e.node, stats)(ctx))
	})
	// 300 ms: less than the first SYN retransmission (1 s), so one SYN per connection.
	dialN(t, e, n, "TCP", apmPort, 300*time.Millisecond, "timeout")
	dialN(t, e, n, "UDP", statsPort, 300*time.Millisecond, "timeout")
	eventually(t, 5*time.Second, "dropped connections counted", func(ctx context.Context) error {
		return errors.Join(wantMetric(e.node, apmDropped, n)(ctx), wantMetric(e.node, statsDropped, n)(ctx))
	})

	deleteMagicIP(t, cp, other.Name)
	eventually(t, 10*time.Second, "the deleted MagicIP's series gone", wantNoMetric(e.node, otherSeries))
}

// setWhenNoProducer sets a MagicIP's whenNoLocalProducer.
func setWhenNoProducer(t *testing.T, cp *harness.ControlPlane, name string, action v1alpha1.NoLocalProducerAction) {
	t.Helper()
	updateMagicIP(t, cp, name, func(m *v1alpha1.MagicIP) { m.Spec.WhenNoLocalProducer = action })
}
