package agent

import (
	"context"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"

	"github.com/magic-ip/magic-ip/agent/nftables"
	"github.com/magic-ip/magic-ip/api/v1alpha1"
	"github.com/magic-ip/magic-ip/test/harness"
)

var (
	magic4 = netip.MustParseAddr("169.254.210.210")
	magic6 = netip.MustParseAddr("fd00::a9fe:d2d2")
)

// wireDual links a pod namespace to node with a veth pair, in both families: the node side gets
// 10.N.0.1/24 and fd00:N::1/64, the pod 10.N.0.2/24 and fd00:N::2/64 (no DAD: usable at once) and
// default routes through them (IPv4 only without v6). Duplicate address detection is off in both
// namespaces: the link-local addresses of new links would stay tentative for a second or two, and
// IPv6 with them.
func wireDual(t *testing.T, node, pod *harness.Netns, ifname string, n int, v6 bool) {
	t.Helper()
	for _, ns := range []*harness.Netns{node, pod} {
		if err := ns.Sysctl("net.ipv6.conf.default.accept_dad", "0"); err != nil {
			t.Fatal(err)
		}
	}
	gw4, gw6 := fmt.Sprintf("10.%d.0.1", n), fmt.Sprintf("fd00:%d::1", n)
	steps := []struct {
		ns   *harness.Netns
		args []string
	}{
		{node, []string{"link", "add", ifname, "type", "veth", "peer", "name", "eth0", "netns", pod.Name}},
		{node, []string{"addr", "add", gw4 + "/24", "dev", ifname}},
		{node, []string{"addr", "add", gw6 + "/64", "dev", ifname, "nodad"}},
		{node, []string{"link", "set", ifname, "up"}},
		{pod, []string{"addr", "add", fmt.Sprintf("10.%d.0.2/24", n), "dev", "eth0"}},
		{pod, []string{"addr", "add", fmt.Sprintf("fd00:%d::2/64", n), "dev", "eth0", "nodad"}},
		{pod, []string{"link", "set", "eth0", "up"}},
		{pod, []string{"route", "add", "default", "via", gw4}},
		{pod, []string{"-6", "route", "add", "default", "via", gw6}},
	}
	for _, s := range steps {
		if !v6 && slices.ContainsFunc(s.args, func(a string) bool { return a == "-6" || strings.Contains(a, "fd00:") }) {
			continue
		}
		if out, err := s.ns.Run(t.Context(), "ip", s.args...); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(s.args, " "), err, out)
		}
	}
}

// dualStackNode is a node namespace with a client pod, a producer pod (10.2.0.2, fd00:2::2,
// serving TCP 8080 and UDP 8053 in both families) and a neighbour on the external interface ext0;
// the node itself answers "node" on the magic ports.
type dualStackNode struct {
	node, client, prod, outside *harness.Netns
}

func newDualStackNode(t *testing.T, name string) dualStackNode {
	n := dualStackNode{node: newNetns(t, name), client: harness.TestNetns(t, name+"c"), prod: harness.TestNetns(t, name+"p"), outside: harness.TestNetns(t, name+"o")}
	wireDual(t, n.node, n.client, "vethc", 1, true)
	wireDual(t, n.node, n.prod, "vethp", 2, true)
	wireDual(t, n.node, n.outside, "ext0", 3, true)
	for _, kv := range [][2]string{{"net.ipv4.ip_forward", "1"}, {"net.ipv6.conf.all.forwarding", "1"}} {
		if err := n.node.Sysctl(kv[0], kv[1]); err != nil {
			t.Fatal(err)
		}
	}
	n.prod.ServeTCP(t, 8080, "producer")
	n.prod.ServeUDP(t, 8053, "producer")
	// The node's own services on the magic ports, on every address: whatever is not redirected
	// must be refused by our rules before it reaches them.
	for _, port := range []int{53, 54, 80, 81, 9999} {
		n.node.ServeTCP(t, port, "node")
		n.node.ServeUDP(t, port, "node")
	}
	return n
}

// dualStackState is one dual-stack MagicIP on bridgeIface: TCP 80 and UDP 53 served by the
// producer in each family (its address of that family), TCP 81 and UDP 54 without producer.
func dualStackState() State {
	st := State{Addresses: map[string][]netip.Addr{bridgeIface: {magic4, magic6}}}
	for _, a := range []netip.Addr{magic4, magic6} {
		prod := netip.MustParseAddr("10.2.0.2")
		if a.Is6() {
			prod = netip.MustParseAddr("fd00:2::2")
		}
		svc := func(port string, p int32, proto v1alpha1.Protocol, target uint16) Service {
			s := Service{MagicIP: "m", PortName: port, Address: a, Port: p, Protocol: proto, Interface: bridgeIface, WhenNoProducer: v1alpha1.Reject}
			if target != 0 {
				s.Endpoints = []Endpoint{{Pod: "ns/prod", Addr: netip.AddrPortFrom(prod, target)}}
			}
			return s
		}
		st.Services = append(st.Services, svc("tcp", 80, v1alpha1.ProtocolTCP, 8080), svc("udp", 53, v1alpha1.ProtocolUDP, 8053),
			svc("none", 81, v1alpha1.ProtocolTCP, 0), svc("noneudp", 54, v1alpha1.ProtocolUDP, 0))
	}
	return st
}

// syncClean syncs st into node (a full sync) with the datapath open makes, then checks that a
// second full sync finds every rule as written: it writes nothing and repairs nothing.
func syncClean(t *testing.T, node *harness.Netns, open func(*Iptables) (Datapath, error), st State) {
	t.Helper()
	inNetns(t, node, func(ipt *Iptables, links *Links) error {
		dp, err := open(ipt)
		if err != nil {
			return err
		}
		s := &Syncer{Datapath: dp, Links: links, Log: logr.Discard()}
		if _, err := s.Sync(context.Background(), st, true); err != nil {
			return err
		}
		res, err := s.Sync(context.Background(), st, true)
		if err == nil && (res.Wrote || len(res.Drift) > 0) {
			t.Errorf("a full resync of the same State wrote %v, drift %q; want nothing", res.Wrote, res.Drift)
		}
		return err
	})
}

// kernelDatapaths open each datapath in the calling thread's namespace (inside inNetns).
func kernelDatapaths() map[string]func(ipt *Iptables) (Datapath, error) {
	local := ExternalInterfaces("ext0")
	return map[string]func(*Iptables) (Datapath, error){
		DatapathIptables: func(ipt *Iptables) (Datapath, error) {
			ipt6, err := NewIp6tables()
			if err != nil {
				return nil, err
			}
			return &IptablesDatapath{Ipt: ipt, Ipt6: ipt6, Local: local, Log: logr.Discard()}, nil
		},
		DatapathNftables: func(*Iptables) (Datapath, error) {
			k, err := nftables.NewKernel(-1)
			if err != nil {
				return nil, err
			}
			return &NftablesDatapath{NFT: &nftables.Datapath{Kernel: k}, Local: local}, nil
		},
	}
}

// outcomeOf dials addr (host:port) over proto from ns: the answer, or how it failed.
func outcomeOf(ctx context.Context, ns *harness.Netns, proto string, addr netip.AddrPort) string {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	var got string
	var err error
	if proto == "udp" {
		got, err = ns.ExchangeUDP(ctx, addr.String())
	} else {
		got, err = ns.DialTCP(ctx, addr.String())
	}
	if err != nil {
		return harness.Outcome(err)
	}
	return got
}

// TestDualStackTraffic: with each datapath, a dual-stack State synced into a real node namespace
// (addresses with netlink, rules through the datapath) serves both families: a pod reaches the
// producer's address of the family it used, over TCP and UDP; a port without producer and an
// undeclared port are refused at once (TCP reset; ICMP or ICMPv6 port unreachable), before the
// node's own services on those ports; a neighbour arriving on the external interface is never
// redirected; and a full resync finds the rules of both families as written (no drift).
func TestDualStackTraffic(t *testing.T) {
	for name, open := range kernelDatapaths() {
		t.Run(name, func(t *testing.T) {
			n := newDualStackNode(t, "ds"+name[:3])
			syncClean(t, n.node, open, dualStackState())
			for _, a := range []netip.Addr{magic4, magic6} {
				for _, c := range []struct {
					from  *harness.Netns
					proto string
					port  uint16
					want  string
				}{
					{n.client, "tcp", 80, "producer"}, {n.client, "udp", 53, "producer"},
					{n.client, "tcp", 81, "refused"}, {n.client, "udp", 54, "refused"},
					{n.client, "tcp", 9999, "refused"}, {n.client, "udp", 9999, "refused"},
					{n.outside, "tcp", 80, "refused"}, {n.outside, "udp", 53, "refused"},
					{n.prod, "tcp", 80, "producer"}, {n.prod, "udp", 53, "producer"}, // hairpin
				} {
					dst := netip.AddrPortFrom(a, c.port)
					if got := outcomeOf(t.Context(), c.from, c.proto, dst); got != c.want {
						t.Errorf("%s %s from %s: %q, want %q", c.proto, dst, c.from.Name, got, c.want)
					}
				}
			}
		})
	}
}

// TestLinksIPv6: an IPv6 magic address goes on the interface usable at once (not tentative:
// no duplicate address detection) and without a prefix route, is found again as ours, and goes
// when no longer wanted; someone else's IPv6 address on the same interface stays.
func TestLinksIPv6(t *testing.T) {
	ns := newNetns(t, "links6")
	if _, err := ns.Run(t.Context(), "ip", "addr", "add", "fd00::99/128", "dev", bridgeIface); err != nil {
		t.Fatal(err)
	}
	show := func() string {
		out, err := ns.Run(t.Context(), "ip", "-6", "addr", "show", "dev", bridgeIface)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	inNetns(t, ns, func(_ *Iptables, links *Links) error {
		if failed := links.Ensure(map[string][]netip.Addr{bridgeIface: {magic4, magic6}}); len(failed) > 0 {
			return fmt.Errorf("ensure: %v", failed)
		}
		owned, err := links.Owned()
		if err != nil {
			return err
		}
		if got := owned[bridgeIface]; len(got) != 2 || got[0] != magic4 || got[1] != magic6 {
			t.Errorf("owned on %s: %v, want %s and %s (not fd00::99)", bridgeIface, got, magic4, magic6)
		}
		return links.RemoveStale(map[string][]netip.Addr{bridgeIface: {magic4}})
	})
	out := show()
	if strings.Contains(out, magic6.String()) {
		t.Errorf("%s still on %s after it was no longer wanted:\n%s", magic6, bridgeIface, out)
	}
	if !strings.Contains(out, "fd00::99/128") {
		t.Errorf("someone else's fd00::99 was removed:\n%s", out)
	}
	inNetns(t, ns, func(_ *Iptables, links *Links) error {
		if failed := links.Ensure(map[string][]netip.Addr{bridgeIface: {magic6}}); len(failed) > 0 {
			return fmt.Errorf("ensure: %v", failed)
		}
		return nil
	})
	if out := show(); !strings.Contains(out, magic6.String()+"/128 scope global nodad noprefixroute") {
		t.Errorf("want %s/128 without DAD nor prefix route, usable at once:\n%s", magic6, out)
	}
}

// TestIp6tablesDriftAndCleanup: the IPv6 rules are read back and repaired on a full sync like the
// IPv4 ones (the drift named after ip6tables), and cleanup removes them from ip6tables too,
// leaving someone else's IPv6 rules alone.
func TestIp6tablesDriftAndCleanup(t *testing.T) {
	ns := newNetns(t, "ip6drift")
	inNetns(t, ns, func(ipt *Iptables, links *Links) error {
		ctx := context.Background()
		ipt6, err := NewIp6tables()
		if err != nil {
			return err
		}
		if _, err := run("ip6tables", "-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "ACCEPT"); err != nil {
			return err
		}
		dp := &IptablesDatapath{Ipt: ipt, Ipt6: ipt6, Local: ExternalInterfaces("eth0"), Log: logr.Discard()}
		s := &Syncer{Datapath: dp, Links: links, Log: logr.Discard()}
		if _, err := s.Sync(ctx, dualStackState(), true); err != nil {
			return err
		}
		if _, err := run("ip6tables", "-F", chainInput); err != nil {
			return err
		}
		res, err := s.Sync(ctx, dualStackState(), true)
		if err != nil {
			return err
		}
		if d := strings.Join(res.Drift, "; "); !res.Wrote || !strings.Contains(d, "ip6tables: ") || !strings.Contains(d, chainInput) {
			t.Errorf("IPv6 refusals flushed behind our back: wrote %v, drift %q; want %s repaired, named after ip6tables", res.Wrote, d, chainInput)
		}
		if save, err := run("ip6tables-save", "-t", "filter"); err != nil || !strings.Contains(save, "icmp6-port-unreachable") {
			t.Errorf("after repair, ip6tables holds (err %v):\n%s", err, save)
		}
		if err := Cleanup(links, dp); err != nil {
			return err
		}
		save, err := run("ip6tables-save")
		if err != nil {
			return err
		}
		if strings.Contains(save, ChainPrefix) || !strings.Contains(save, "--dport 22 -j ACCEPT") {
			t.Errorf("after cleanup, want none of ours and the foreign rule kept:\n%s", save)
		}
		return nil
	})
}

// TestNoIPv6Node: on a node with IPv6 disabled (net.ipv6.conf.all.disable_ipv6=1), each datapath
// programs the IPv4 address of a dual-stack MagicIP — its pods reach the producer — and reports
// the IPv6 address unprogrammed, with why; the sync does not fail, and resyncs report the same
// and write nothing (no flapping).
func TestNoIPv6Node(t *testing.T) {
	for name, open := range kernelDatapaths() {
		t.Run(name, func(t *testing.T) {
			node := newNetns(t, "no6"+name[:3])
			for _, k := range []string{"net.ipv6.conf.all.disable_ipv6", "net.ipv6.conf.default.disable_ipv6"} {
				if err := node.Sysctl(k, "1"); err != nil {
					t.Fatal(err)
				}
			}
			client, prod := harness.TestNetns(t, "no6"+name[:3]+"c"), harness.TestNetns(t, "no6"+name[:3]+"p")
			wireDual(t, node, client, "vethc", 1, false)
			wireDual(t, node, prod, "vethp", 2, false)
			if err := node.Sysctl("net.ipv4.ip_forward", "1"); err != nil {
				t.Fatal(err)
			}
			prod.ServeTCP(t, 8080, "producer")
			var first []v1alpha1.UnprogrammedAddress
			inNetns(t, node, func(ipt *Iptables, links *Links) error {
				dp, err := open(ipt)
				if err != nil {
					return err
				}
				s := &Syncer{Datapath: dp, Links: links, Log: logr.Discard(), Unsupported: map[Family]string{IPv6: IPv6Unavailable(Sysctl{}, dp)}}
				for i := range 3 {
					res, err := s.Sync(context.Background(), dualStackState(), true)
					if err != nil {
						return fmt.Errorf("sync %d: %w", i+1, err)
					}
					un := res.State.Unprogrammed["m"]
					switch {
					case i == 0:
						first = un
					case !reflect.DeepEqual(un, first) || res.Wrote || len(res.Drift) > 0:
						t.Errorf("resync %d: unprogrammed %+v, wrote %v, drift %q; want %+v again, nothing written", i, un, res.Wrote, res.Drift, first)
					}
				}
				return nil
			})
			if len(first) != 1 || first[0].Address != magic6.String() || first[0].Reason != v1alpha1.ReasonAddressFamilyNotSupported || !strings.Contains(first[0].Message, "disable_ipv6=1") {
				t.Errorf("unprogrammed %+v, want %s AddressFamilyNotSupported naming disable_ipv6=1", first, magic6)
			}
			if got := outcomeOf(t.Context(), client, "tcp", netip.AddrPortFrom(magic4, 80)); got != "producer" {
				t.Errorf("tcp %s:80: %q, want the producer", magic4, got)
			}
		})
	}
}

// syncerIn returns a function that syncs a State into node (not a full sync) with one Syncer, on
// the datapath open makes at its first call.
func syncerIn(t *testing.T, node *harness.Netns, open func(*Iptables) (Datapath, error)) func(State) {
	var s *Syncer
	return func(st State) {
		t.Helper()
		inNetns(t, node, func(ipt *Iptables, links *Links) error {
			if s == nil {
				dp, err := open(ipt)
				if err != nil {
					return err
				}
				s = &Syncer{Datapath: dp, Links: links, Log: logr.Discard()}
			}
			s.Links = links
			_, err := s.Sync(context.Background(), st, false)
			// The flush runs after Sync returns: the checks below look at its outcome.
			s.WaitFlushes()
			return err
		})
	}
}

// TestDualStackUDPFlush: with each datapath and in each family, a client reusing one UDP socket
// to the magic address follows a producer change at once: a sync that takes the producer in use
// away deletes the service's conntrack entries of that family, and the same socket reaches the
// producer left (without, its flow would stay with the one gone). A sync that only adds a
// producer beside the one in use keeps those flows — the same conntrack entry, still answered by
// the first producer — and spares the flush's dump.
func TestDualStackUDPFlush(t *testing.T) {
	for name, open := range kernelDatapaths() {
		t.Run(name, func(t *testing.T) {
			n := newDualStackNode(t, "fl"+name[:3])
			prod2 := harness.TestNetns(t, "fl"+name[:3]+"q")
			wireDual(t, n.node, prod2, "vethq", 4, true)
			prod2.ServeUDP(t, 8053, "producer2")
			// withUDP is dualStackState with the UDP service's producers of each family set to
			// those named (1: the producer, 2: prod2).
			withUDP := func(which ...int) State {
				st := dualStackState()
				for i, s := range st.Services {
					if s.PortName != "udp" {
						continue
					}
					var eps []Endpoint
					for _, w := range which {
						addr := netip.AddrPortFrom(netip.MustParseAddr(fmt.Sprintf("10.%d.0.2", 2*w)), 8053)
						if s.Address.Is6() {
							addr = netip.AddrPortFrom(netip.MustParseAddr(fmt.Sprintf("fd00:%d::2", 2*w)), 8053)
						}
						eps = append(eps, Endpoint{Pod: fmt.Sprintf("ns/prod%d", w), Addr: addr})
					}
					st.Services[i].Endpoints = eps
				}
				return st
			}
			sync := syncerIn(t, n.node, open)
			// flowIDs are the ids of the node's UDP conntrack entries sent to a (none: "").
			flowIDs := func(a netip.Addr) string {
				t.Helper()
				out, err := n.node.Run(t.Context(), "conntrack", "-L", "-p", "udp", "-d", a.String(), "-o", "id")
				if err != nil {
					t.Fatalf("conntrack -L -d %s: %v: %s", a, err, out)
				}
				var ids []string
				for _, f := range strings.Fields(out) {
					if strings.HasPrefix(f, "id=") {
						ids = append(ids, f)
					}
				}
				return strings.Join(ids, " ")
			}
			sync(withUDP(1))
			type flow struct {
				addr netip.Addr
				sock *harness.UDPClient
				ids  string
			}
			var flows []*flow
			for _, a := range []netip.Addr{magic4, magic6} {
				u, err := n.client.DialUDP(netip.AddrPortFrom(a, 53).String())
				if err != nil {
					t.Fatal(err)
				}
				defer u.Close()
				if got, err := u.Exchange(t.Context()); got != "producer" {
					t.Fatalf("%s: first exchange %q (%v), want producer", a, got, err)
				}
				f := &flow{addr: a, sock: u, ids: flowIDs(a)}
				if f.ids == "" {
					t.Fatalf("%s: no conntrack entry after an exchange", a)
				}
				flows = append(flows, f)
			}
			sync(withUDP(1, 2))
			for _, f := range flows {
				if ids := flowIDs(f.addr); ids != f.ids {
					t.Errorf("%s: conntrack entries %q after a producer was only added, want %q kept", f.addr, ids, f.ids)
				}
				for i := range 3 {
					if got, err := f.sock.Exchange(t.Context()); got != "producer" {
						t.Errorf("%s: exchange %d after a producer was added: %q (%v), want the first producer still", f.addr, i, got, err)
					}
				}
			}
			sync(withUDP(2))
			for _, f := range flows {
				if ids := flowIDs(f.addr); ids != "" {
					t.Errorf("%s: conntrack entries %q after the producer in use went, want none", f.addr, ids)
				}
				if got, err := f.sock.Exchange(t.Context()); got != "producer2" {
					t.Errorf("%s: same socket after its producer went: %q (%v), want producer2", f.addr, got, err)
				}
			}
		})
	}
}

// TestIp6tablesOnlyWhenNeeded: while no MagicIP has an IPv6 address, the iptables datapath runs no
// ip6tables process after its first sync (which removes IPv6 rules an earlier run left), however
// many full syncs follow; a dual-stack MagicIP writes them, and its going removes them again.
func TestIp6tablesOnlyWhenNeeded(t *testing.T) {
	ns := newNetns(t, "ip6need")
	inNetns(t, ns, func(ipt *Iptables, links *Links) error {
		ctx := context.Background()
		ipt6, err := NewIp6tables()
		if err != nil {
			return err
		}
		dp := &IptablesDatapath{Ipt: ipt, Ipt6: ipt6, Local: ExternalInterfaces("eth0"), Log: logr.Discard()}
		s := &Syncer{Datapath: dp, Links: links, Log: logr.Discard()}
		v4 := withoutFamily(dualStackState(), IPv6, "test")
		ours := func() bool {
			save, err := run("ip6tables-save")
			if err != nil {
				t.Fatal(err)
			}
			return strings.Contains(save, ChainPrefix)
		}
		steps := []struct {
			st        State
			wantRules bool
		}{{dualStackState(), true}, {v4, false}, {v4, false}, {v4, false}, {dualStackState(), true}, {v4, false}}
		for i, step := range steps {
			before := ipt6.Execs()
			if _, err := s.Sync(ctx, step.st, true); err != nil {
				return fmt.Errorf("step %d: %w", i, err)
			}
			if got := ours(); got != step.wantRules {
				t.Errorf("step %d: rules of ours in ip6tables %v, want %v", i, got, step.wantRules)
			}
			if i > 0 && !steps[i-1].wantRules && !step.wantRules && ipt6.Execs() != before {
				t.Errorf("step %d: %d ip6tables processes for an IPv4-only State already synced, want 0", i, ipt6.Execs()-before)
			}
		}
		return nil
	})
}
