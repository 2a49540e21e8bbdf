package nftables

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strings"

	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Rule is one rendered rule: its expressions, the same in nft syntax (for tests, logs and drift
// reports), and the comment it carries in the kernel (its user data).
type Rule struct {
	Text    string
	Comment string
	Exprs   []expr.Any
}

// builder accumulates a rule's matches and statement, in nft syntax and as expressions side by
// side, so the text always says what the kernel gets.
type builder struct {
	text  []string
	exprs []expr.Any
}

func newRule() *builder { return &builder{} }

func (b *builder) add(text string, exprs ...expr.Any) *builder {
	b.text = append(b.text, text)
	b.exprs = append(b.exprs, exprs...)
	return b
}

func (b *builder) rule(comment string) Rule {
	return Rule{Text: strings.Join(b.text, " "), Comment: comment, Exprs: b.exprs}
}

// IPv4 header offsets, and kernel constants golang.org/x/sys lacks.
const (
	ipsDstNAT           = 1 << 5 // IPS_DST_NAT (linux/netfilter/nf_conntrack_common.h)
	icmpPortUnreachable = 3      // ICMP_PORT_UNREACH
	// reg32After1 is NFT_REG32_01, the 32-bit register right after the first four bytes of
	// NFT_REG_1 (NFT_REG32_00 is 8): where a concatenation's second field goes.
	reg32After1 = 9

	offSaddr = 12
	offDaddr = 16
)

func (b *builder) ipAddr(field string, off uint32, a netip.Addr) *builder {
	return b.add(fmt.Sprintf("ip %s %s", field, a),
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: 4},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: a.AsSlice()})
}

func (b *builder) daddr(a netip.Addr) *builder { return b.ipAddr("daddr", offDaddr, a) }
func (b *builder) saddr(a netip.Addr) *builder { return b.ipAddr("saddr", offSaddr, a) }

// saddrPrefix matches a source prefix (an exact address for a /32).
func (b *builder) saddrPrefix(p netip.Prefix) *builder {
	p = p.Masked()
	if p.Bits() == 32 {
		return b.saddr(p.Addr())
	}
	m := binary.BigEndian.AppendUint32(nil, ^uint32(0)<<(32-p.Bits()))
	return b.add("ip saddr "+p.String(),
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offSaddr, Len: 4},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: m, Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: p.Addr().AsSlice()})
}

// ifname matches the input or output interface: "eth0" exactly, "veth+" by prefix (as iptables'
// -i does; nft writes it "veth*").
func (b *builder) ifname(key expr.MetaKey, dir string, op expr.CmpOp, name string) *builder {
	data, shown := []byte(name+"\x00"), name
	if prefix, ok := strings.CutSuffix(name, "+"); ok {
		data, shown = []byte(prefix), prefix+"*"
	}
	neg := ""
	if op == expr.CmpOpNeq {
		neg = "!= "
	}
	return b.add(fmt.Sprintf("%sname %s%q", dir, neg, shown),
		&expr.Meta{Key: key, Register: 1}, &expr.Cmp{Op: op, Register: 1, Data: data})
}

func (b *builder) iifname(name string) *builder {
	return b.ifname(expr.MetaKeyIIFNAME, "iif", expr.CmpOpEq, name)
}

func (b *builder) l4(proto string, port uint16) *builder {
	p := []byte{unix.IPPROTO_TCP}
	if proto == "udp" {
		p = []byte{unix.IPPROTO_UDP}
	}
	b.add(fmt.Sprintf("meta l4proto %s", proto), &expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: p})
	if port == 0 {
		return b
	}
	return b.add(fmt.Sprintf("th dport %d", port),
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.BigEndian.AppendUint16(nil, port)})
}

// ctBits matches a conntrack bit field (state or status) having any of bits set.
func (b *builder) ctBits(text string, key expr.CtKey, bits uint32) *builder {
	return b.add(text, &expr.Ct{Key: key, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: binary.NativeEndian.AppendUint32(nil, bits), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)})
}

// ctNew matches the first packet of a connection (never a reply, nor a RELATED refusal).
func (b *builder) ctNew() *builder {
	return b.ctBits("ct state new", expr.CtKeySTATE, expr.CtStateBitNEW)
}

// ctDNAT matches connections whose destination was translated.
func (b *builder) ctDNAT() *builder { return b.ctBits("ct status dnat", expr.CtKeySTATUS, ipsDstNAT) }

// pairIn matches when the packet's source . destination is in the named set (of ipv4_addr .
// ipv4_addr: the source in the first 32-bit register, the destination in the next).
func (b *builder) pairIn(set string) *builder {
	return b.add("ip saddr . ip daddr @"+set,
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offSaddr, Len: 4},
		&expr.Payload{DestRegister: reg32After1, Base: expr.PayloadBaseNetworkHeader, Offset: offDaddr, Len: 4},
		&expr.Lookup{SourceRegister: 1, SetName: set})
}

// oneIn matches with probability 1/n (numgen random mod n == 0); n=1 matches always and adds nothing.
func (b *builder) oneIn(n int) *builder {
	if n <= 1 {
		return b
	}
	return b.add(fmt.Sprintf("numgen random mod %d == 0", n),
		&expr.Numgen{Register: 1, Modulus: uint32(n), Type: unix.NFT_NG_RANDOM},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: make([]byte, 4)})
}

func (b *builder) counter() *builder { return b.add("counter", &expr.Counter{}) }

func (b *builder) verdict(kind expr.VerdictKind, chain string) *builder {
	text := map[expr.VerdictKind]string{expr.VerdictJump: "jump " + chain, expr.VerdictReturn: "return", expr.VerdictDrop: "drop"}[kind]
	return b.add(text, &expr.Verdict{Kind: kind, Chain: chain})
}

func (b *builder) dnat(to netip.AddrPort) *builder {
	return b.add("dnat to "+to.String(),
		&expr.Immediate{Register: 1, Data: to.Addr().AsSlice()},
		&expr.Immediate{Register: 2, Data: binary.BigEndian.AppendUint16(nil, to.Port())},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1, RegProtoMin: 2, Specified: true})
}

func (b *builder) masquerade() *builder { return b.add("masquerade", &expr.Masq{}) }

// refuse renders a verdict for proto: drop, a TCP reset, or ICMP port unreachable.
func (b *builder) refuse(v Verdict, proto string) *builder {
	switch {
	case v == Drop:
		return b.verdict(expr.VerdictDrop, "")
	case proto == "tcp":
		return b.add("reject with tcp reset", &expr.Reject{Type: unix.NFT_REJECT_TCP_RST})
	default:
		return b.add("reject with icmp port-unreachable", &expr.Reject{Type: unix.NFT_REJECT_ICMP_UNREACH, Code: icmpPortUnreachable})
	}
}
