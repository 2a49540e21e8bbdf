package agent

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/go-logr/logr/testr"

	"github.com/magic-ip/magic-ip/api/v1alpha1"
	"github.com/magic-ip/magic-ip/test/harness"
)

// bridgeIface is the host interface the kernel tests put magic addresses on: a bridge, as a CNI's
// (this kernel may have no dummy link type).
const bridgeIface = "cni0"

// newNetns creates a network namespace with a bridgeIface for one test and removes it when the
// test ends.
func newNetns(t harness.T, name string) *harness.Netns {
	t.Helper()
	ns := harness.TestNetns(t, name)
	for _, args := range [][]string{{"link", "add", bridgeIface, "type", "bridge"}, {"link", "set", bridgeIface, "up"}} {
		if _, err := ns.Run(t.Context(), "ip", args...); err != nil {
			t.Fatal(err)
		}
	}
	return ns
}

// inNetns opens the agent's kernel handles inside ns and runs f on a thread there (so the
// iptables processes it starts run there too). f reports with t.Error*, never t.Fatal (it does
// not run on the test's goroutine); its error fails the test.
func inNetns(t harness.T, ns *harness.Netns, f func(ipt *Iptables, links *Links) error) {
	t.Helper()
	err := ns.Do(func() error {
		ipt, err := NewIptables()
		if err != nil {
			return err
		}
		links, err := NewLinks(DefaultDummyInterface)
		if err != nil {
			return err
		}
		defer links.Close()
		return f(ipt, links)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// run runs a command on the calling thread's namespace (inside inNetns: the test's) and returns
// its output.
func run(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// everyShape is a State whose rules take every shape Render writes: DNAT spread over 3 and 7
// producers (probabilities 1/7 … 1/2, most not exact in the kernel's 2^-31 steps), TCP reset and
// ICMP port-unreachable rejects, a DROP, a service without producers, host-client MASQUERADE,
// two addresses, comments with spaces.
func everyShape() State {
	a1, a2 := netip.MustParseAddr("169.254.210.210"), netip.MustParseAddr("169.254.20.10")
	svc := func(mip, port string, a netip.Addr, p int32, proto v1alpha1.Protocol, when v1alpha1.NoLocalProducerAction, eps int) Service {
		s := Service{MagicIP: mip, PortName: port, Address: a, Port: p, Protocol: proto, WhenNoProducer: when}
		for i := range eps {
			s.Endpoints = append(s.Endpoints, Endpoint{Pod: fmt.Sprintf("ns/%s-%d", mip, i),
				Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 244, 1, byte(10 + i)}), uint16(p))})
		}
		return s
	}
	return State{
		Addresses: map[string][]netip.Addr{bridgeIface: {a1, a2}},
		Services: []Service{
			svc("datadog", "apm", a1, 8126, v1alpha1.ProtocolTCP, v1alpha1.Reject, 3),
			svc("datadog", "dogstatsd", a1, 8125, v1alpha1.ProtocolUDP, v1alpha1.Reject, 7),
			svc("datadog", "otlp", a1, 4317, v1alpha1.ProtocolTCP, v1alpha1.Reject, 0),
			svc("statsd", "udp", a2, 8125, v1alpha1.ProtocolUDP, v1alpha1.Drop, 0),
			svc("statsd", "tcp", a2, 8126, v1alpha1.ProtocolTCP, v1alpha1.Drop, 1),
		},
	}
}

// withOtherShapes adds rules of shapes Render writes in other configurations: the node-local
// matches of every --detect-local-mode other than NodeAddresses, a hairpin MASQUERADE spelled
// with "/32" after --ctorigdst, refusals of NEW connections on other ports, the host clients'
// jump without a prefix, and MAGIC-IP-SERVICES split into a tree of address blocks (many
// services).
func withOtherShapes(rs Ruleset) Ruleset {
	nat, filter := rs.Chains["nat"], rs.Chains["filter"]
	for _, d := range []*LocalDetector{
		{Mode: NodeCIDR, Local: []LocalMatch{{Source: netip.MustParsePrefix("10.244.1.0/24")}}},
		{Mode: BridgeInterface, Local: []LocalMatch{{Interface: "cni0"}}},
		{Mode: InterfaceNamePrefix, Local: []LocalMatch{{Interface: "veth+"}, {Interface: "cali+"}}},
	} {
		nat[chainPrerouting] = append(nat[chainPrerouting], d.dispatch(IPv4)...)
	}
	nat[chainPost] = append(nat[chainPost], hostsJump([]netip.Addr{netip.MustParseAddr("1.1.1.1"), netip.MustParseAddr("255.1.1.1")}))
	var lines []dispatchLine
	for i := range 3 * blockLeaf {
		a := netip.AddrFrom4([4]byte{169, 254, byte(i % 7), byte(i)})
		lines = append(lines, dispatchLine{a, fmt.Sprintf(`-d %s/32 -p tcp -m tcp --dport 80 -m comment --comment "many:%d" -j %s`, a, i, chainServices)})
	}
	splitDispatch(nat, blockPrefix+"TEST", lines)
	nat[chainPost] = append(nat[chainPost],
		`-s 10.244.1.10/32 -d 10.244.1.10/32 -m conntrack --ctstate DNAT --ctorigdst 169.254.210.210/32 -m comment --comment "datadog:apm hairpin: ns/datadog-0" -j MASQUERADE`)
	filter[chainInput] = append(filter[chainInput],
		`-d 169.254.210.210/32 -p tcp -m tcp --dport 4317 -m conntrack --ctstate NEW -m comment --comment "datadog:otlp: new connections" -j REJECT --reject-with tcp-reset`,
		`-d 169.254.20.10/32 -p udp -m udp --dport 8125 -m conntrack --ctstate NEW -m comment --comment "statsd:udp: new flows" -j DROP`)
	return rs
}

// TestIptablesRoundTrip: every shape of rule we write, restored into a real kernel and saved back
// (nf_tables and legacy), compares equal to what we wrote — although iptables-save prints many of
// them differently — so a resync never sees drift in its own rules and never repairs in a loop.
func TestIptablesRoundTrip(t *testing.T) {
	for _, mode := range []string{"nft", "legacy"} {
		t.Run(mode, func(t *testing.T) {
			usePath(t, iptablesMode(t, mode))
			ns := newNetns(t, "roundtrip-"+mode)
			rs := withOtherShapes(Render(everyShape(), ExternalInterfaces("eth0", "ens5")))
			inNetns(t, ns, func(ipt *Iptables, links *Links) error {
				ctx := context.Background()
				saved, err := ipt.Save(ctx)
				if err != nil {
					return err
				}
				if err := ipt.Restore(ctx, rs.Restore(nil, ParseSave(saved).JumpFixes())); err != nil {
					return err
				}
				if saved, err = ipt.Save(ctx); err != nil {
					return err
				}
				obs := ParseSave(saved)
				if d := obs.Drifted(rs); len(d) != 0 {
					t.Errorf("the rules we wrote, saved back, show drift:\n%s\n\niptables-save:\n%s", strings.Join(d, "\n"), saved)
				}
				t.Logf("%d of %d rules are printed back in another spelling than ours", respelled(rs, obs), countRules(rs))
				return nil
			})
		})
	}
}

// respelled counts the rules of rs that iptables-save printed with other text.
func respelled(rs Ruleset, o Observed) (n int) {
	for table, chains := range rs.Chains {
		for c, rules := range chains {
			for i, r := range rules {
				if i < len(o.Rules[table][c]) && o.Rules[table][c][i] != r {
					n++
				}
			}
		}
	}
	return n
}

func countRules(rs Ruleset) (n int) {
	for _, chains := range rs.Chains {
		for _, rules := range chains {
			n += len(rules)
		}
	}
	return n
}

// iptablesMode returns a directory whose iptables, iptables-save and iptables-restore are those
// of mode (nft or legacy).
func iptablesMode(t *testing.T, mode string) string {
	dir := t.TempDir()
	for _, bin := range []string{"iptables", "iptables-save", "iptables-restore"} {
		target, err := exec.LookPath(strings.Replace(bin, "iptables", "iptables-"+mode, 1))
		if err != nil {
			t.Fatalf("iptables %s mode: %v (apt-get install iptables)", mode, err)
		}
		if err := os.Symlink(target, filepath.Join(dir, bin)); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// usePath puts dir first in PATH for the rest of the test.
func usePath(t *testing.T, dir string) {
	t.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH"))
}

// TestSyncRepairsEditedRule: a rule edited in place (a DNAT target changed: same rule count) and a
// rule replaced by another are found by the next full sync, logged rule by rule, and repaired;
// the sync after finds nothing and writes nothing.
func TestSyncRepairsEditedRule(t *testing.T) {
	ns := newNetns(t, "driftedit")
	st := everyShape()
	rs := Render(st, ExternalInterfaces("eth0"))
	svc := svcChain(st.Services[0])
	edits := map[string]struct {
		cmds [][]string
		want string
	}{
		"DNAT target changed": {
			cmds: [][]string{{"-t", "nat", "-R", svc, "1", "-p", "tcp", "-j", "DNAT", "--to-destination", "192.0.2.1:9"}},
			want: fmt.Sprintf("nat/%s rule 1: wrote %q, found \"-p tcp -j DNAT --to-destination 192.0.2.1:9\"", svc, rs.Chains["nat"][svc][0]),
		},
		"a refusal replaced by an accept": {
			cmds: [][]string{{"-D", chainInput, "2"}, {"-A", chainInput, "-p", "udp", "-j", "ACCEPT"}},
			want: fmt.Sprintf("filter/%s rule 2: wrote %q, found %q", chainInput, rs.Chains["filter"][chainInput][1], rs.Chains["filter"][chainInput][2]),
		},
	}
	inNetns(t, ns, func(ipt *Iptables, links *Links) error {
		s := &Syncer{Datapath: &IptablesDatapath{Ipt: ipt, Local: ExternalInterfaces("eth0"), Log: testr.New(t)}, Links: links, Log: testr.New(t)}
		ctx := context.Background()
		if _, err := s.Sync(ctx, st, true); err != nil {
			return err
		}
		for name, e := range edits {
			for _, c := range e.cmds {
				if _, err := run("iptables", append([]string{"-w", "5"}, c...)...); err != nil {
					return err
				}
			}
			res, err := s.Sync(ctx, st, true)
			if err != nil {
				return err
			}
			if len(res.Drift) != 1 || res.Drift[0] != e.want || !res.Wrote {
				t.Errorf("%s: drift %q (wrote %v), want [%q] and a repair", name, res.Drift, res.Wrote, e.want)
			}
			if res, err = s.Sync(ctx, st, true); err != nil || len(res.Drift) != 0 || res.Wrote {
				t.Errorf("%s: the resync after the repair: drift %q, wrote %v, err %v; want nothing", name, res.Drift, res.Wrote, err)
			}
		}
		return nil
	})
}
