package nftables

import (
	"fmt"
	"net/netip"
	"os"
	"slices"
	"testing"

	"github.com/magic-ip/magic-ip/test/harness"
)

// TestKernelVerdictCounts: the verdict rules read back over netlink give each port's key,
// protocol, verdict and the packets they refused or dropped (one per new connection); the rules
// of ports with a producer count nothing, the undeclared-port rules are not listed; no table, no
// counts.
func TestKernelVerdictCounts(t *testing.T) {
	node, k, _ := netnsKernel(t, "nftcount")
	if got, err := k.VerdictCounts(); err != nil || got != nil {
		t.Fatalf("VerdictCounts without our table = %v, %v; want none", got, err)
	}
	client, prod := harness.TestNetns(t, "nftcountc"), harness.TestNetns(t, "nftcountp")
	wire(t, node, client, "vethc", "10.1.0.1", "10.1.0.2")
	wire(t, node, prod, "vethp", "10.2.0.1", "10.2.0.2")
	for _, args := range [][]string{{"addr", "add", "169.254.210.210/32", "dev", "lo"}, {"link", "set", "lo", "up"}} {
		if _, err := node.Run(t.Context(), "ip", args...); err != nil {
			t.Fatal(err)
		}
	}
	if err := node.Sysctl("net.ipv4.icmp_ratelimit", "0"); err != nil {
		t.Fatal(err)
	}
	prod.ServeTCP(t, 8080, "producer")
	in := Input{
		Addresses: []netip.Addr{magic},
		Services: []Service{
			{Key: "m:tcp", Addr: magic, Port: 80, Protocol: "tcp", Verdict: Reject, Endpoints: []Endpoint{{Pod: "p", Addr: netip.MustParseAddrPort("10.2.0.2:8080")}}},
			{Key: "m:none", Addr: magic, Port: 81, Protocol: "tcp", Verdict: Reject},
			{Key: "m:noneudp", Addr: magic, Port: 54, Protocol: "udp", Verdict: Drop},
		},
		Local: Local{All: true},
	}
	if _, _, err := (&Datapath{Kernel: k}).Apply(Render(in), true); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		for _, c := range []struct{ proto, dst, want string }{
			{"tcp", "169.254.210.210:80", "producer"}, {"tcp", "169.254.210.210:81", "refused"},
			{"udp", "169.254.210.210:54", "timeout"}, {"tcp", "169.254.210.210:9999", "refused"},
		} {
			if got := outcome(t.Context(), client, c.proto, c.dst); got != c.want {
				t.Fatalf("%s %s: %q, want %q", c.proto, c.dst, got, c.want)
			}
		}
	}
	got, err := k.VerdictCounts()
	if err != nil {
		t.Fatal(err)
	}
	want := []VerdictCount{{"m:tcp", "tcp", Reject, 0}, {"m:none", "tcp", Reject, 3}, {"m:noneudp", "udp", Drop, 3}}
	if !slices.Equal(got, want) {
		t.Errorf("VerdictCounts = %+v, want %+v", got, want)
	}
}

// BenchmarkVerdictCounts: one read of the verdict rules' counters, with 1 and 100 MagicIPs (two
// ports each) in our table of a fresh namespace.
func BenchmarkVerdictCounts(b *testing.B) {
	for _, n := range []int{1, 100} {
		b.Run(fmt.Sprintf("magicips=%d", n), func(b *testing.B) {
			ns := harness.TestNetns(b, fmt.Sprintf("nftcountb%d", n))
			f, err := os.Open(ns.Path())
			if err != nil {
				b.Fatal(err)
			}
			defer f.Close()
			k, err := NewKernel(int(f.Fd()))
			if err != nil {
				b.Fatal(err)
			}
			defer k.Close()
			if err := k.Write(Render(fleetInput(n, 0))); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for range b.N {
				if vcs, err := k.VerdictCounts(); err != nil || len(vcs) != 2*n {
					b.Fatalf("VerdictCounts: %d rules, %v; want %d", len(vcs), err, 2*n)
				}
			}
		})
	}
}
