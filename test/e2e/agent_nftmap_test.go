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
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// The nftables datapath DNATs through maps: the services chain looks the packet's magic address .
// protocol . port up in the verdict map dispatch (dispatch6), whose element goes to the spread
// chain of the service's number of producers; that chain's rule loads the same key from the
// packet into the registers from NFT_REG_1 on, numgen random mod n picks the slot after it, and the map endpoints
// (endpoints6) gives the producer of that slot. These read such rules back as text, and list each
// service's dispatch element and the producers it can send to, as the rules of old did.

// nftMapDNATText renders a DNAT through map set (a lookup writing the NAT's registers), its key
// loaded from the packet: numgen is the text of the whole concatenation, the numgen its last
// field.
func nftMapDNATText(nat *expr.NAT, numgen, set string) string {
	fam := "ip"
	if nat.Family == unix.NFPROTO_IPV6 {
		fam = "ip6"
	}
	return fmt.Sprintf("dnat %s to %s map @%s", fam, numgen, set)
}

// nftMapElements lists, for the services chain's lookup in a dispatch map, each element of that
// map (a service) and its producers, as lines "<map>: <address> . <protocol> . <port> : goto
// <chain> comment <service key>" and, per slot in order, "<service key>: dnat to <producer>
// comment <element comment>". It reads each map once.
type nftMapElements struct {
	c    *gnft.Conn
	maps map[string][]gnft.SetElement
}

func (m *nftMapElements) lines(exprs []expr.Any) (string, error) {
	var set string
	alen := 0
	for _, e := range exprs {
		switch e := e.(type) {
		case *expr.Payload:
			if e.Base == expr.PayloadBaseNetworkHeader {
				alen = int(e.Len)
			}
		case *expr.Lookup:
			if e.IsDestRegSet && e.DestRegister == unix.NFT_REG_VERDICT {
				set = e.SetName
			}
		}
	}
	if set == "" || (alen != 4 && alen != 16) {
		return "", nil
	}
	elems, err := m.elements(set)
	if err != nil {
		return "", err
	}
	slices.SortFunc(elems, func(a, b gnft.SetElement) int { return bytes.Compare(a.Key, b.Key) })
	endpoints := map[string]string{"dispatch": "endpoints", "dispatch6": "endpoints6"}[set]
	var b strings.Builder
	for _, e := range elems {
		if len(e.Key) != alen+8 {
			fmt.Fprintf(&b, "%s: key %x : %s comment %q\n", set, e.Key, nftVerdictText(e.Val), e.Comment)
			continue
		}
		a, _ := netip.AddrFromSlice(e.Key[:alen])
		proto := map[byte]string{unix.IPPROTO_TCP: "tcp", unix.IPPROTO_UDP: "udp"}[e.Key[alen]]
		fmt.Fprintf(&b, "%s: %s . %s . %d : %s comment %q\n", set, a, proto, binary.BigEndian.Uint16(e.Key[alen+4:]), nftVerdictText(e.Val), e.Comment)
		producers, err := m.producers(endpoints, e.Key, alen, e.Comment)
		if err != nil {
			return "", err
		}
		b.WriteString(producers)
	}
	return b.String(), nil
}

// producers lists the elements of the endpoints map set whose key starts with a service's key,
// in slot order, each as "<service>: dnat to <producer> comment <element comment>".
func (m *nftMapElements) producers(set string, key []byte, alen int, service string) (string, error) {
	elems, err := m.elements(set)
	if err != nil {
		return "", err
	}
	bySlot := map[uint32]string{}
	for _, e := range elems {
		if len(e.Key) == len(key)+4 && bytes.HasPrefix(e.Key, key) && len(e.Val) >= alen+2 {
			a, _ := netip.AddrFromSlice(e.Val[:alen])
			to := netip.AddrPortFrom(a, binary.BigEndian.Uint16(e.Val[alen:]))
			bySlot[binary.NativeEndian.Uint32(e.Key[len(key):])] = fmt.Sprintf("%s: dnat to %s comment %q\n", service, to, e.Comment)
		}
	}
	var b strings.Builder
	for _, slot := range slices.Sorted(maps.Keys(bySlot)) {
		b.WriteString(bySlot[slot])
	}
	return b.String(), nil
}

// nftVerdictText renders a verdict map element's data as google/nftables hands it over: the
// attributes inside NFTA_DATA_VERDICT (code, then the chain of a jump or goto).
func nftVerdictText(val []byte) string {
	ad, err := netlink.NewAttributeDecoder(val)
	if err != nil {
		return fmt.Sprintf("verdict %x", val)
	}
	ad.ByteOrder = binary.BigEndian
	kind, chain := "", ""
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_VERDICT_CODE:
			kind = map[int32]string{int32(expr.VerdictGoto): "goto", int32(expr.VerdictJump): "jump"}[int32(ad.Uint32())]
		case unix.NFTA_VERDICT_CHAIN:
			chain = ad.String()
		}
	}
	if kind == "" || ad.Err() != nil {
		return fmt.Sprintf("verdict %x", val)
	}
	return kind + " " + chain
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
