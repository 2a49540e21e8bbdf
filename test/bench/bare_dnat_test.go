package bench

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/magic-ip/magic-ip/test/harness"
)

// The bare DNAT addresses of BenchmarkBackends: each node DNATs them to its producer with one
// hand-written rule (bareDNAT), the least any tool that DNATs can do.
const (
	bareAddr  = "169.254.99.99"
	bareAddr6 = "fd00::a9fe:6363"
)

// bareDNAT writes into ns a table of its own, "bench-bare-dnat" (family ip for an IPv4 from, ip6
// for an IPv6 one), with one nat chain at prerouting (priority dstnat - 20: before magic-ip's and
// kube-proxy's, so no other nat rule is walked for it) holding one rule: daddr from, tcp dport
// port → dnat to to:port. No set, no map, no random spread: the floor a DNAT costs on this
// kernel, against which the magic IP's and the ClusterIP's own rules are measured. The table
// goes with the namespace.
func bareDNAT(ns *harness.Netns, from, to netip.Addr, port uint16) error {
	f, err := os.Open(ns.Path())
	if err != nil {
		return fmt.Errorf("bare DNAT: %w", err)
	}
	defer f.Close()
	c, err := nftables.New(nftables.WithNetNSFd(int(f.Fd())))
	if err != nil {
		return fmt.Errorf("bare DNAT: nftables netlink: %w", err)
	}
	family, nfproto, daddrAt := nftables.TableFamilyIPv4, uint32(unix.NFPROTO_IPV4), uint32(16)
	if from.Is6() {
		family, nfproto, daddrAt = nftables.TableFamilyIPv6, unix.NFPROTO_IPV6, 24
	}
	t := c.AddTable(&nftables.Table{Family: family, Name: "bench-bare-dnat"})
	ch := c.AddChain(&nftables.Chain{Name: "prerouting", Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityRef(*nftables.ChainPriorityNATDest - 20)})
	p := binary.BigEndian.AppendUint16(nil, port)
	c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: daddrAt, Len: uint32(from.BitLen() / 8)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: from.AsSlice()},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: p},
		&expr.Immediate{Register: 1, Data: to.AsSlice()},
		&expr.Immediate{Register: 2, Data: p},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: nfproto, RegAddrMin: 1, RegProtoMin: 2, Specified: true},
	}})
	if err := c.Flush(); err != nil {
		return fmt.Errorf("bare DNAT %s → %s: %w", from, to, err)
	}
	return nil
}
