package e2e

import (
	"encoding/binary"
	"fmt"
	"math/bits"
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/magic-ip/magic-ip/agent/nftables"
	"github.com/magic-ip/magic-ip/test/harness"
)

// nftRuleText renders a rule read back from the kernel in nft syntax, for the expressions our
// table uses (others by their Go type): what the tests check and print, read from the kernel
// rather than from the agent's own rendering.
func nftRuleText(exprs []expr.Any) string {
	var out []string
	var subject string // what the next cmp (or lookup) compares
	var mask []byte
	family := "ip" // set by a meta nfproto match, which the rule's text leaves implicit
	imm := map[uint32][]byte{}
	var mapped string // the map a lookup writing registers read
	for _, e := range exprs {
		switch e := e.(type) {
		case *expr.Payload:
			subject, mask = payloadName(e, family, subject), nil
		case *expr.Meta:
			prev := subject
			subject, mask = map[expr.MetaKey]string{expr.MetaKeyIIFNAME: "iifname", expr.MetaKeyOIFNAME: "oifname", expr.MetaKeyL4PROTO: "meta l4proto", expr.MetaKeyNFPROTO: "meta nfproto"}[e.Key], nil
			if e.Register != 1 && prev != "" { // a concatenation's further field
				subject = prev + " . " + subject
			}
		case *expr.Cmp:
			if subject == "meta nfproto" {
				family = map[byte]string{unix.NFPROTO_IPV4: "ip", unix.NFPROTO_IPV6: "ip6"}[e.Data[0]]
				continue
			}
			out = append(out, cmpText(subject, mask, e))
		case *expr.Ct:
			subject, mask = map[expr.CtKey]string{expr.CtKeySTATE: "ct state", expr.CtKeySTATUS: "ct status"}[e.Key], nil
		case *expr.Numgen:
			prev := subject
			subject, mask = fmt.Sprintf("numgen random mod %d", e.Modulus), nil
			if e.Offset != 0 {
				subject += fmt.Sprintf(" offset %d", e.Offset)
			}
			if e.Register != 1 && prev != "" { // a concatenation's further field
				subject = prev + " . " + subject
			}
		case *expr.Bitwise:
			mask = e.Mask
		case *expr.Lookup:
			if e.IsDestRegSet && e.DestRegister == unix.NFT_REG_VERDICT {
				out = append(out, subject+" vmap @"+e.SetName)
				continue
			}
			if e.IsDestRegSet {
				mapped = e.SetName
				continue
			}
			if e.Invert {
				out = append(out, subject+" != @"+e.SetName)
				continue
			}
			out = append(out, subject+" @"+e.SetName)
		case *expr.Immediate:
			imm[e.Register] = e.Data
			if e.Register >= unix.NFT_REG32_00 && subject != "" && len(e.Data) == 4 { // a constant field of a concatenation
				subject += fmt.Sprintf(" . %d", binary.NativeEndian.Uint32(e.Data))
			}
		case *expr.NAT:
			if mapped != "" {
				out = append(out, nftMapDNATText(e, subject, mapped))
				continue
			}
			a, _ := netip.AddrFromSlice(imm[e.RegAddrMin])
			out = append(out, "dnat to "+netip.AddrPortFrom(a, binary.BigEndian.Uint16(append(imm[e.RegProtoMin], 0, 0))).String())
		case *expr.Verdict:
			out = append(out, strings.TrimSpace(map[expr.VerdictKind]string{expr.VerdictJump: "jump", expr.VerdictGoto: "goto", expr.VerdictReturn: "return", expr.VerdictDrop: "drop", expr.VerdictAccept: "accept"}[e.Kind]+" "+e.Chain))
		case *expr.Counter:
			out = append(out, "counter")
		case *expr.Masq:
			out = append(out, "masquerade")
		case *expr.Reject:
			out = append(out, rejectText(e))
		default:
			out = append(out, fmt.Sprintf("%T", e))
		}
	}
	return strings.Join(out, " ")
}

// payloadName names an address of family (ip or ip6) or a transport port load; a second load (a
// concatenation) joins the first with " . ".
func payloadName(p *expr.Payload, family, prev string) string {
	offsets := map[string][2]uint32{"ip": {12, 16}, "ip6": {8, 24}}[family]
	name := map[[2]uint32]string{{uint32(expr.PayloadBaseNetworkHeader), offsets[0]}: family + " saddr", {uint32(expr.PayloadBaseNetworkHeader), offsets[1]}: family + " daddr",
		{uint32(expr.PayloadBaseTransportHeader), 2}: "th dport"}[[2]uint32{uint32(p.Base), p.Offset}]
	if name == "" {
		name = fmt.Sprintf("payload base %d offset %d", p.Base, p.Offset)
	}
	if p.DestRegister != 1 && prev != "" {
		return prev + " . " + name
	}
	return name
}

// rejectText renders a reject: a TCP reset, or ICMP port unreachable (code 3) in an IPv4 rule,
// ICMPv6 port unreachable (code 4) in an IPv6 one.
func rejectText(r *expr.Reject) string {
	switch r.Type {
	case unix.NFT_REJECT_TCP_RST:
		return "reject with tcp reset"
	case unix.NFT_REJECT_ICMP_UNREACH:
		return map[uint8]string{3: "reject with icmp port-unreachable", 4: "reject with icmpv6 port-unreachable"}[r.Code]
	}
	return fmt.Sprintf("reject type %d code %d", r.Type, r.Code)
}

// cmpText renders one comparison of subject (masked by mask, if any) with the cmp's data.
func cmpText(subject string, mask []byte, c *expr.Cmp) string {
	op := ""
	if c.Op == expr.CmpOpNeq {
		op = "!= "
	}
	var value string
	switch subject {
	case "ip saddr", "ip daddr", "ip6 saddr", "ip6 daddr":
		a, _ := netip.AddrFromSlice(c.Data)
		value = a.String()
		if mask != nil {
			ones := 0
			for _, b := range mask {
				ones += bits.OnesCount8(b)
			}
			value = netip.PrefixFrom(a, ones).String()
		}
	case "iifname", "oifname":
		if name, whole := strings.CutSuffix(string(c.Data), "\x00"); whole {
			value = fmt.Sprintf("%q", name)
		} else {
			value = fmt.Sprintf("%q", name+"*")
		}
	case "meta l4proto":
		value = map[byte]string{unix.IPPROTO_TCP: "tcp", unix.IPPROTO_UDP: "udp"}[c.Data[0]]
	case "th dport":
		value = fmt.Sprint(binary.BigEndian.Uint16(c.Data))
	case "ct state", "ct status":
		return subject + " " + map[uint32]string{expr.CtStateBitNEW: "new", 1 << 5: "dnat"}[binary.NativeEndian.Uint32(mask)]
	default:
		value = fmt.Sprintf("%x", c.Data)
		if strings.HasPrefix(subject, "numgen") {
			value = fmt.Sprint(binary.NativeEndian.Uint32(c.Data))
			op = "== "
		}
	}
	return subject + " " + op + value
}

// TestNftRuleText: every rule of a table with every shape the nftables datapath writes (each
// --detect-local-mode's matches, a spread over producers, each verdict, both families), written to a fresh netns
// and read back, renders as the text the renderer gave it: what the datapath tests read from the
// kernel says what the kernel holds.
func TestNftRuleText(t *testing.T) {
	ns := harness.TestNetns(t, "nftruletext")
	f, err := os.Open(ns.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	k, err := nftables.NewKernel(int(f.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	a := netip.MustParseAddr(magicAddr)
	eps := []nftables.Endpoint{{Pod: "dd-1", Addr: netip.MustParseAddrPort("10.244.1.10:8126")}, {Pod: "dd-2", Addr: netip.MustParseAddrPort("10.244.1.11:8126")}}
	a6 := netip.MustParseAddr(magicAddr6)
	eps6 := []nftables.Endpoint{{Pod: "dd-1", Addr: netip.MustParseAddrPort("[fd00:10:244:1::a]:8126")}}
	rs := nftables.Render(nftables.Input{Addresses: []netip.Addr{a, a6},
		Local: nftables.Local{Sources: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("fd00:10:244:1::/64")}, Interfaces: []string{"cali+", "cni0"}},
		Services: []nftables.Service{{Key: "datadog:apm", Addr: a, Port: apmPort, Protocol: "tcp", Verdict: nftables.Reject, Endpoints: eps},
			{Key: "datadog:dogstatsd", Addr: a, Port: statsPort, Protocol: "udp", Verdict: nftables.Drop},
			{Key: "datadog:apm6", Addr: a6, Port: apmPort, Protocol: "tcp", Verdict: nftables.Reject, Endpoints: eps6},
			{Key: "datadog:dogstatsd6", Addr: a6, Port: statsPort, Protocol: "udp", Verdict: nftables.Reject}}})
	rs.Chains[0].Rules = append(nftables.Render(nftables.Input{Addresses: []netip.Addr{a}, Local: nftables.Local{External: []string{"eth0"}}}).Chains[0].Rules, rs.Chains[0].Rules...)
	if err := k.Write(rs); err != nil {
		t.Fatal(err)
	}
	c, err := nftConn(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseLasting()
	got, _, err := nftRules(c)
	if err != nil {
		t.Fatal(err)
	}
	for _, ch := range rs.Chains {
		for _, r := range ch.Rules {
			if want := fmt.Sprintf("%s: %s comment %q\n", ch.Name, r.Text, r.Comment); !strings.Contains(got, want) {
				t.Errorf("rule %q not read back as written; read:\n%s", want, got)
			}
		}
	}
	for _, d := range rs.Dispatch {
		want := fmt.Sprintf("%s: %s comment %q\n", map[bool]string{true: "dispatch", false: "dispatch6"}[d.Addr.Is4()], d.Text(), d.Comment)
		for _, e := range d.Elements {
			want += fmt.Sprintf("%s: dnat to %s comment %q\n", d.Comment, e.To, e.Comment)
		}
		if !strings.Contains(got, want) {
			t.Errorf("dispatch element and producers %q not read back as written; read:\n%s", want, got)
		}
	}
}
