package e2e

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	gnft "github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// The nftables datapath DNATs through a map: a service chain goes to the spread chain of its
// number of producers, whose rule loads the packet's key (magic address . protocol . port) into
// the registers from NFT_REG_1 on, numgen random mod n picks the slot after it, and the map
// endpoints (endpoints6) gives the producer of that slot. These read such rules back as text, and
// list the producers a service chain can send to (its key is in the services chain's rule that
// jumps to it) as the rules of old did.

// nftMapDNATText renders a DNAT through map set (a lookup writing the NAT's registers): imm holds
// the immediates by register, numgen the numgen's text.
func nftMapDNATText(nat *expr.NAT, imm map[uint32][]byte, numgen, set string) string {
	key := nftServiceKey(imm)
	fam, alen := "ip", 4
	if nat.Family == unix.NFPROTO_IPV6 {
		fam, alen = "ip6", 16
	}
	if len(key) == 0 { // loaded from the packet: numgen is the whole concatenation
		return fmt.Sprintf("dnat %s to %s map @%s", fam, numgen, set)
	}
	if len(key) != alen+8 {
		return fmt.Sprintf("dnat %s to key %x . %s map @%s", fam, key, numgen, set)
	}
	a, _ := netip.AddrFromSlice(key[:alen])
	proto := map[byte]string{unix.IPPROTO_TCP: "tcp", unix.IPPROTO_UDP: "udp"}[key[alen]]
	return fmt.Sprintf("dnat %s to %s . %s . %d . %s map @%s", fam, a, proto, binary.BigEndian.Uint16(key[alen+4:]), numgen, set)
}

// nftServiceKey is the key the immediates wrote from NFT_REG_1 on (16 bytes a register).
func nftServiceKey(imm map[uint32][]byte) []byte {
	var key []byte
	for r := uint32(unix.NFT_REG_1); len(imm[r]) > 0; r++ {
		key = append(key, imm[r]...)
	}
	return key
}

// nftMapElements lists, for a rule that DNATs through a map, the producers of its service, one
// line "chain: dnat to <producer> comment <element comment>" per slot, in order. It reads each
// map once.
type nftMapElements struct {
	c    *gnft.Conn
	maps map[string][]gnft.SetElement
	// keys are the service keys of the chains the services chain jumps to (see note).
	keys map[string][]byte
}

// note records the service key of a rule that jumps to a service chain: its address, protocol
// and port matches, as the endpoints map's keys hold them.
func (m *nftMapElements) note(exprs []expr.Any) {
	var key []byte
	var loaded string
	for _, e := range exprs {
		switch e := e.(type) {
		case *expr.Payload:
			loaded = fmt.Sprintf("%d/%d", e.Base, e.Offset)
			if e.Base == expr.PayloadBaseNetworkHeader {
				loaded = "addr"
			}
		case *expr.Meta:
			loaded = fmt.Sprint("meta", e.Key)
		case *expr.Cmp:
			switch loaded {
			case "addr":
				key = append(key, e.Data...)
			case fmt.Sprint("meta", expr.MetaKeyL4PROTO):
				key = append(key, e.Data[0], 0, 0, 0)
			case fmt.Sprintf("%d/%d", expr.PayloadBaseTransportHeader, 2):
				key = append(key, e.Data[0], e.Data[1], 0, 0)
			}
		case *expr.Verdict:
			if e.Kind == expr.VerdictJump && strings.HasPrefix(e.Chain, "svc-") && (len(key) == 12 || len(key) == 24) {
				if m.keys == nil {
					m.keys = map[string][]byte{}
				}
				m.keys[e.Chain] = key
			}
		}
	}
}

func (m *nftMapElements) lines(chain string, exprs []expr.Any) (string, error) {
	m.note(exprs)
	imm := map[uint32][]byte{}
	var set string
	var nat *expr.NAT
	for _, e := range exprs {
		switch e := e.(type) {
		case *expr.Immediate:
			imm[e.Register] = e.Data
		case *expr.Lookup:
			if e.IsDestRegSet {
				set = e.SetName
			}
		case *expr.NAT:
			nat = e
		case *expr.Verdict:
			// a service chain's rule: its producers are those of its key in the map the spread
			// chain looks up
			if key := m.keys[chain]; e.Kind == expr.VerdictGoto && strings.HasPrefix(e.Chain, "spread-") && key != nil {
				set, nat = "endpoints", &expr.NAT{Family: unix.NFPROTO_IPV4}
				if len(key) == 24 {
					set, nat = "endpoints6", &expr.NAT{Family: unix.NFPROTO_IPV6}
				}
				imm = map[uint32][]byte{unix.NFT_REG_1: key[:min(16, len(key))], unix.NFT_REG_2: key[min(16, len(key)):]}
			}
		}
	}
	if set == "" || nat == nil || len(imm) == 0 {
		return "", nil
	}
	elems, err := m.elements(set)
	if err != nil {
		return "", err
	}
	key, alen := nftServiceKey(imm), 4
	if nat.Family == unix.NFPROTO_IPV6 {
		alen = 16
	}
	bySlot := map[uint32]string{}
	for _, e := range elems {
		if len(e.Key) == len(key)+4 && bytes.HasPrefix(e.Key, key) && len(e.Val) >= alen+2 {
			a, _ := netip.AddrFromSlice(e.Val[:alen])
			to := netip.AddrPortFrom(a, binary.BigEndian.Uint16(e.Val[alen:]))
			bySlot[binary.NativeEndian.Uint32(e.Key[len(key):])] = fmt.Sprintf("%s: dnat to %s comment %q\n", chain, to, e.Comment)
		}
	}
	var b strings.Builder
	for _, slot := range slices.Sorted(maps.Keys(bySlot)) {
		b.WriteString(bySlot[slot])
	}
	return b.String(), nil
}

func (m *nftMapElements) elements(set string) ([]gnft.SetElement, error) {
	if elems, ok := m.maps[set]; ok {
		return elems, nil
	}
	elems, err := m.c.GetSetElements(&gnft.Set{Table: ourTable, Name: set})
	if err != nil {
		return nil, fmt.Errorf("elements of map %s: %w", set, err)
	}
	if m.maps == nil {
		m.maps = map[string][]gnft.SetElement{}
	}
	m.maps[set] = elems
	return elems, nil
}
