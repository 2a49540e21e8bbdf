package nftables

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
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
	// family is the address family matched so far (0: none): in our inet table an address match
	// needs a meta nfproto check first, written once per rule.
	family byte
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

// Header offsets per family, and kernel constants golang.org/x/sys lacks.
const (
	ipsDstNAT             = 1 << 5 // IPS_DST_NAT (linux/netfilter/nf_conntrack_common.h)
	icmpPortUnreachable   = 3      // ICMP_PORT_UNREACH
	icmpv6PortUnreachable = 4      // ICMPV6_PORT_UNREACH
	// reg32After1 is NFT_REG32_01, the 32-bit register right after the first four bytes of
	// NFT_REG_1 (NFT_REG32_00 is 8): where a concatenation's second IPv4 field goes. The second
	// IPv6 field (after 16 bytes) goes in NFT_REG_2.
	reg32After1 = 9

	offSaddr4, offDaddr4 = 12, 16
	offSaddr6, offDaddr6 = 8, 24
)

// family is what an address's family is called in nft syntax and its header offsets.
type family struct {
	name         string // "ip" or "ip6"
	nfproto      byte
	saddr, daddr uint32
	len          uint32
}

var (
	ipv4 = family{name: "ip", nfproto: unix.NFPROTO_IPV4, saddr: offSaddr4, daddr: offDaddr4, len: 4}
	ipv6 = family{name: "ip6", nfproto: unix.NFPROTO_IPV6, saddr: offSaddr6, daddr: offDaddr6, len: 16}
)

func familyOf(a netip.Addr) family {
	if a.Is4() {
		return ipv4
	}
	return ipv6
}

// nfproto restricts the rule to one family (once): the payload offsets of an address differ.
func (b *builder) nfproto(f family) *builder {
	if b.family == f.nfproto {
		return b
	}
	b.family = f.nfproto
	b.exprs = append(b.exprs, &expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1}, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{f.nfproto}})
	return b
}

func (b *builder) ipAddr(field string, a netip.Addr) *builder {
	f := familyOf(a)
	off := f.daddr
	if field == "saddr" {
		off = f.saddr
	}
	return b.nfproto(f).add(fmt.Sprintf("%s %s %s", f.name, field, a),
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: f.len},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: a.AsSlice()})
}

func (b *builder) daddr(a netip.Addr) *builder { return b.ipAddr("daddr", a) }
func (b *builder) saddr(a netip.Addr) *builder { return b.ipAddr("saddr", a) }

// saddrPrefix matches a source prefix (an exact address for a /32 or /128).
func (b *builder) saddrPrefix(p netip.Prefix) *builder {
	p = p.Masked()
	if p.IsSingleIP() {
		return b.saddr(p.Addr())
	}
	f := familyOf(p.Addr())
	mask := make([]byte, f.len)
	for i := range p.Bits() {
		mask[i/8] |= 0x80 >> (i % 8)
	}
	return b.nfproto(f).add(f.name+" saddr "+p.String(),
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: f.saddr, Len: f.len},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: f.len, Mask: mask, Xor: make([]byte, f.len)},
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

// addrNotIn matches when the packet's address (field: "daddr" or "saddr") of family f is not in
// set (and only packets of f).
func (b *builder) addrNotIn(field string, f family, set string) *builder {
	off := f.daddr
	if field == "saddr" {
		off = f.saddr
	}
	return b.nfproto(f).add(fmt.Sprintf("%s %s != @%s", f.name, field, set),
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: f.len},
		&expr.Lookup{SourceRegister: 1, SetName: set, Invert: true})
}

// pairIn matches when the packet's source . destination is in the named set of f's address pairs
// (the source from the first register on, the destination right after it).
func (b *builder) pairIn(f family, set string) *builder {
	second := uint32(reg32After1)
	if f.len == 16 {
		second = unix.NFT_REG_2
	}
	return b.nfproto(f).add(fmt.Sprintf("%s saddr . %[1]s daddr @%s", f.name, set),
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: f.saddr, Len: f.len},
		&expr.Payload{DestRegister: second, Base: expr.PayloadBaseNetworkHeader, Offset: f.daddr, Len: f.len},
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
	text := map[expr.VerdictKind]string{expr.VerdictJump: "jump " + chain, expr.VerdictGoto: "goto " + chain, expr.VerdictReturn: "return", expr.VerdictDrop: "drop"}[kind]
	return b.add(text, &expr.Verdict{Kind: kind, Chain: chain})
}

func (b *builder) dnat(to netip.AddrPort) *builder {
	return b.add("dnat to "+to.String(),
		&expr.Immediate{Register: 1, Data: to.Addr().AsSlice()},
		&expr.Immediate{Register: 2, Data: binary.BigEndian.AppendUint16(nil, to.Port())},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: uint32(familyOf(to.Addr()).nfproto), RegAddrMin: 1, RegProtoMin: 2, Specified: true})
}

func (b *builder) masquerade() *builder { return b.add("masquerade", &expr.Masq{}) }

// refuse renders a verdict for proto: drop, a TCP reset, or port unreachable in the ICMP of the
// rule's family (ICMPv6 for an IPv6 address).
func (b *builder) refuse(v Verdict, proto string) *builder {
	switch {
	case v == Drop:
		return b.verdict(expr.VerdictDrop, "")
	case proto == "tcp":
		return b.add("reject with tcp reset", &expr.Reject{Type: unix.NFT_REJECT_TCP_RST})
	case b.family == unix.NFPROTO_IPV6:
		return b.add("reject with icmpv6 port-unreachable", &expr.Reject{Type: unix.NFT_REJECT_ICMP_UNREACH, Code: icmpv6PortUnreachable})
	default:
		return b.add("reject with icmp port-unreachable", &expr.Reject{Type: unix.NFT_REJECT_ICMP_UNREACH, Code: icmpPortUnreachable})
	}
}

// protoNumber is the IP protocol number of "tcp" or "udp".
func protoNumber(proto string) byte {
	if proto == "udp" {
		return unix.IPPROTO_UDP
	}
	return unix.IPPROTO_TCP
}

// serviceKey is the start of a service's keys in the endpoints map, as the registers hold it:
// address . protocol . port, each field padded to 4 bytes; the slot follows (see slotKey).
func serviceKey(a netip.Addr, proto string, port uint16) []byte {
	k := append(a.AsSlice(), protoNumber(proto), 0, 0, 0)
	return append(binary.BigEndian.AppendUint16(k, port), 0, 0)
}

// slotKey is the whole key of slot i of a service: numgen writes the slot in host order.
func slotKey(service []byte, i int) []byte {
	return binary.NativeEndian.AppendUint32(slices.Clip(service), uint32(i))
}

// endpointData is a map element's data: the producer's address . port, the port padded to 4 bytes.
func endpointData(to netip.AddrPort) []byte {
	return append(binary.BigEndian.AppendUint16(to.Addr().AsSlice(), to.Port()), 0, 0)
}

// spread DNATs to the producer of slot numgen random mod n of the service the packet is sent to:
// the key (destination address . protocol . port . slot, as serviceKey and slotKey give it) is
// loaded from the packet into the registers from NFT_REG_1 on, and the lookup's data (address,
// then port) overwrites it from NFT_REG_1 on. The dispatch map goes to the spread chain of a
// service's number of producers, which holds this rule: the spread chains are the endpoints map's
// only users. The kernel checks an element added to a map against every rule that looks it up
// (nft_add_set_elem walks the map's bindings): with a lookup in a chain per service a producer
// replaced cost the kernel about 0.2 ms more at 1,000 MagicIPs × 3 ports than at one. (A chain
// cannot hand the key over in registers: the kernel refuses a load from a register no earlier
// expression of the same rule wrote, ENODATA.)
//
// A service with one producer has it in slot 0, one with n > 1 in slots 1 to n (numgen's
// offset 1): the prerouting chain DNATs new connections to a service of one producer straight
// from slot 0 (single), before any other lookup — the usual case, a DaemonSet's one producer
// per node — and the others miss that slot and go on to the dispatch map.
func (b *builder) spread(f family, n int) *builder {
	slot, text := expr.Any(&expr.Numgen{Register: reg32(int(f.len) + 8), Modulus: uint32(n), Type: unix.NFT_NG_RANDOM}), fmt.Sprintf("numgen random mod %d", n)
	if n > 1 {
		slot = &expr.Numgen{Register: reg32(int(f.len) + 8), Modulus: uint32(n), Type: unix.NFT_NG_RANDOM, Offset: 1}
		text += " offset 1"
	}
	return b.endpointDNAT(f, text, slot)
}

// single DNATs a new connection to a service of one producer, whose slot is 0 (see spread); a
// packet to any other service or address finds no element and goes on to the next rule.
func (b *builder) single(f family) *builder {
	return b.endpointDNAT(f, "0", &expr.Immediate{Register: reg32(int(f.len) + 8), Data: make([]byte, 4)})
}

// endpointDNAT loads the packet's destination . protocol . port and the slot (loaded by slot,
// in nft syntax slotText) into the registers, looks the key up in the endpoints map of f and
// DNATs to the address and port found.
func (b *builder) endpointDNAT(f family, slotText string, slot expr.Any) *builder {
	set := f.endpointsMap()
	return b.nfproto(f).add(fmt.Sprintf("dnat %s to %s daddr . meta l4proto . th dport . %s map @%s", f.name, f.name, slotText, set),
		&expr.Payload{DestRegister: unix.NFT_REG_1, Base: expr.PayloadBaseNetworkHeader, Offset: f.daddr, Len: f.len},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg32(int(f.len))},
		&expr.Payload{DestRegister: reg32(int(f.len) + 4), Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		slot,
		&expr.Lookup{SourceRegister: unix.NFT_REG_1, SetName: set, DestRegister: unix.NFT_REG_1, IsDestRegSet: true},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: uint32(f.nfproto), RegAddrMin: unix.NFT_REG_1, RegProtoMin: reg32(int(f.len)), Specified: true})
}

// dispatch looks the packet's destination . protocol . port up in the dispatch map of f, whose
// element's verdict (goto the service's spread chain) becomes the rule's; no element, no verdict.
// The key is loaded as spread loads it.
func (b *builder) dispatch(f family) *builder {
	set := f.dispatchMap()
	return b.nfproto(f).add(fmt.Sprintf("%s daddr . meta l4proto . th dport vmap @%s", f.name, set),
		&expr.Payload{DestRegister: unix.NFT_REG_1, Base: expr.PayloadBaseNetworkHeader, Offset: f.daddr, Len: f.len},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg32(int(f.len))},
		&expr.Payload{DestRegister: reg32(int(f.len) + 4), Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Lookup{SourceRegister: unix.NFT_REG_1, SetName: set, DestRegister: unix.NFT_REG_VERDICT, IsDestRegSet: true})
}

// pick is v4 for IPv4, v6 for IPv6: the name of a set or map of family f.
func (f family) pick(v4, v6 string) string {
	if f.nfproto == ipv6.nfproto {
		return v6
	}
	return v4
}

// dispatchMap names the dispatch map of family f.
func (f family) dispatchMap() string { return f.pick(dispatchMap, dispatchMap6) }

// endpointsMap names the endpoints map of family f.
func (f family) endpointsMap() string { return f.pick(endpointsMap, endpointsMap6) }

// reg32 is the 32-bit register off bytes after the start of NFT_REG_1 (NFT_REG32_00).
func reg32(off int) uint32 { return uint32(unix.NFT_REG32_00 + off/4) }
