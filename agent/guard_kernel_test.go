package agent

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"testing"
	"time"

	gnft "github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/magic-ip/magic-ip/agent/nftables"
)

// TestGuardSendsOtherTrafficOn: a packet to an address that is no magic address leaves each of
// our chains it enters at the chain's guard (the nftables datapath's lookup in the set of magic
// addresses, the iptables datapath's prefix line), the chain's first rule (in the nftables
// postrouting, after the two hairpin masquerades), instead of walking the chain's rules — in the
// input chain one per port and two per address, 300 + 200 here; in the iptables datapath's nat
// chains one or more per address too. Seen with the kernel's packet tracing
// (nftrace, as `nft monitor trace` shows it), for both datapaths: a UDP datagram to 127.0.0.1
// traced through output, postrouting and input. Two checks that the probe tells a guarded chain
// from one that is not: a datagram to a magic address (on a port it does not serve, so the input
// chain refuses it) is not returned by the guard; and with the input chain's guard deleted, the
// same datagram to 127.0.0.1 no longer leaves the chain at its first rule.
func TestGuardSendsOtherTrafficOn(t *testing.T) {
	eachKernelDP(t, "guard", func(t *testing.T, d kernelDP, s *Syncer) error {
		if _, err := s.Sync(context.Background(), fleet(100, 0), true); err != nil {
			return fmt.Errorf("sync: %w", err)
		}
		return checkGuards(t, d.Name())
	})
}

// chainRef names a chain of ours and its table.
type chainRef struct {
	table *gnft.Table
	name  string
}

// guardedChains are, per datapath, the chains of ours a locally sent datagram enters: nat output
// and postrouting, filter input.
func guardedChains(dp string) (out, post, input chainRef) {
	if dp == DatapathNftables {
		t := &gnft.Table{Name: nftables.TableName, Family: nftables.TableFamily}
		return chainRef{t, "output"}, chainRef{t, "postrouting"}, chainRef{t, "input"}
	}
	nat, filter := &gnft.Table{Name: "nat", Family: gnft.TableFamilyIPv4}, &gnft.Table{Name: "filter", Family: gnft.TableFamilyIPv4}
	return chainRef{nat, chainOutput}, chainRef{nat, chainPost}, chainRef{filter, chainInput}
}

// checkGuards runs the three traced sends of TestGuardSendsOtherTrafficOn on the calling thread
// (inside the test's namespace, the datapath programmed).
func checkGuards(t *testing.T, dp string) error {
	conn, err := gnft.New()
	if err != nil {
		return err
	}
	out, post, input := guardedChains(dp)
	guards := map[chainRef]*gnft.Rule{}
	for _, c := range []chainRef{out, post, input} {
		rules, err := conn.GetRules(c.table, &gnft.Chain{Name: c.name})
		if err != nil {
			return fmt.Errorf("rules of %s: %w", c.name, err)
		}
		// The trace shows rules that match, not the ones walked before: the guard's place is read.
		at := guardAt(rules)
		if at < 0 || (c == input && len(rules) < 500) {
			return fmt.Errorf("chain %s: %d rules, no guard among them (or, in the input chain, fewer than one per port and two per address)", c.name, len(rules))
		}
		if before := rules[:at]; len(before) > 0 && (dp == DatapathIptables || c != post || len(before) > 2 || !masquerades(before)) {
			t.Errorf("chain %s: %d rules before its guard, want none (or, in the nftables postrouting, the two hairpin masquerades)", c.name, at)
		}
		guards[c] = rules[at]
	}
	if err := traceUDP(conn); err != nil {
		return err
	}
	for _, c := range []struct {
		what, to string
		// leftAtGuard: per chain, whether the datagram must leave it at its guard.
		leftAtGuard map[chainRef]bool
		before      func() error
	}{
		{what: "127.0.0.1, not a magic address", to: "127.0.0.1:9999", leftAtGuard: map[chainRef]bool{out: true, post: true, input: true}},
		// postrouting's guard looks at the source: not checked here.
		{what: "169.254.1.1, a magic address, on a port it does not serve", to: "169.254.1.1:9999", leftAtGuard: map[chainRef]bool{out: false, input: false}},
		{what: "127.0.0.1 with the input chain's guard deleted", to: "127.0.0.1:9999", leftAtGuard: map[chainRef]bool{out: true, post: true, input: false},
			before: func() error {
				if err := conn.DelRule(guards[input]); err != nil {
					return err
				}
				return conn.Flush()
			}},
	} {
		if c.before != nil {
			if err := c.before(); err != nil {
				return fmt.Errorf("%s: %w", c.what, err)
			}
		}
		events, err := traceSend(c.to, func(evs []traceEvent) bool {
			return firstIn(evs, input) != nil
		})
		if err != nil {
			return fmt.Errorf("%s: %w", c.what, err)
		}
		for chain, want := range c.leftAtGuard {
			first := firstIn(events, chain)
			if first == nil {
				t.Errorf("%s: no trace of chain %s: %+v", c.what, chain.name, events)
				continue
			}
			left := first.kind == unix.NFT_TRACETYPE_RULE && first.verdict == unix.NFT_RETURN && first.handle == guards[chain].Handle
			if left != want {
				t.Errorf("%s: chain %s: left at its guard (rule %d): %v, want %v; its first trace event %+v", c.what, chain.name, guards[chain].Handle, left, want, *first)
			}
		}
	}
	return nil
}

// guardAt is the index of the first of rules that returns (the guard), or -1.
func guardAt(rules []*gnft.Rule) int {
	return slices.IndexFunc(rules, func(r *gnft.Rule) bool {
		return slices.ContainsFunc(r.Exprs, func(e expr.Any) bool {
			v, ok := e.(*expr.Verdict)
			return ok && v.Kind == expr.VerdictReturn
		})
	})
}

// masquerades reports whether every rule masquerades.
func masquerades(rules []*gnft.Rule) bool {
	for _, r := range rules {
		if !slices.ContainsFunc(r.Exprs, func(e expr.Any) bool { _, ok := e.(*expr.Masq); return ok }) {
			return false
		}
	}
	return true
}

// traceUDP adds the table of the test's tracer: UDP to port 9999 sent or received is traced.
func traceUDP(conn *gnft.Conn) error {
	t := conn.AddTable(&gnft.Table{Name: "test-trace", Family: gnft.TableFamilyINet})
	for _, hook := range []*gnft.ChainHook{gnft.ChainHookOutput, gnft.ChainHookPrerouting} {
		ch := conn.AddChain(&gnft.Chain{Name: fmt.Sprint("trace-", *hook), Table: t, Type: gnft.ChainTypeFilter, Hooknum: hook,
			Priority: gnft.ChainPriorityRef(*gnft.ChainPriorityRaw - 100)})
		conn.AddRule(&gnft.Rule{Table: t, Chain: ch, Exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_UDP}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.BigEndian.AppendUint16(nil, 9999)},
			&expr.Immediate{Register: 1, Data: []byte{1}},
			&expr.Meta{Key: expr.MetaKeyNFTRACE, SourceRegister: true, Register: 1},
		}})
	}
	return conn.Flush()
}

// traceEvent is one event of the kernel's packet trace.
type traceEvent struct {
	table, chain string
	handle       uint64
	kind         uint32 // unix.NFT_TRACETYPE_*
	verdict      int32  // unix.NFT_RETURN, NF_DROP, ...
}

// traceSend listens to the kernel's packet trace of the calling thread's namespace, sends one UDP
// datagram to to from there, and returns the events until done says it has what it needs (2 s at
// most).
func traceSend(to string, done func([]traceEvent) bool) ([]traceEvent, error) {
	const nfnlgrpNftrace = 9 // NFNLGRP_NFTRACE
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, nil)
	if err != nil {
		return nil, fmt.Errorf("netlink: %w", err)
	}
	defer c.Close()
	if err := c.JoinGroup(nfnlgrpNftrace); err != nil {
		return nil, fmt.Errorf("join the trace group: %w", err)
	}
	u, err := net.Dial("udp", to)
	if err != nil {
		return nil, err
	}
	defer u.Close()
	if _, err := u.Write([]byte("x")); err != nil {
		return nil, err
	}
	if err := c.SetReadDeadline(time.Now().Add(2 * time.Second)); err != nil {
		return nil, err
	}
	var events []traceEvent
	for !done(events) {
		msgs, err := c.Receive()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return events, fmt.Errorf("trace incomplete after 2 s: %v", events)
		}
		if err != nil {
			return events, fmt.Errorf("read the trace: %w", err)
		}
		for _, m := range msgs {
			if m.Header.Type != netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8|unix.NFT_MSG_TRACE) || len(m.Data) < 4 {
				continue
			}
			ev, err := parseTrace(m.Data[4:]) // after the nfgenmsg
			if err != nil {
				return events, err
			}
			events = append(events, ev)
		}
	}
	return events, nil
}

// parseTrace decodes a trace message's attributes.
func parseTrace(b []byte) (traceEvent, error) {
	var ev traceEvent
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return ev, err
	}
	ad.ByteOrder = binary.BigEndian
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_TRACE_TABLE:
			ev.table = ad.String()
		case unix.NFTA_TRACE_CHAIN:
			ev.chain = ad.String()
		case unix.NFTA_TRACE_RULE_HANDLE:
			ev.handle = ad.Uint64()
		case unix.NFTA_TRACE_TYPE:
			ev.kind = ad.Uint32()
		case unix.NFTA_TRACE_VERDICT:
			ad.Nested(func(nad *netlink.AttributeDecoder) error {
				for nad.Next() {
					if nad.Type() == unix.NFTA_VERDICT_CODE {
						ev.verdict = int32(nad.Uint32())
					}
				}
				return nil
			})
		}
	}
	return ev, ad.Err()
}

// firstIn is the first event of chain c, or nil.
func firstIn(events []traceEvent, c chainRef) *traceEvent {
	for i := range events {
		if events[i].table == c.table.Name && events[i].chain == c.name {
			return &events[i]
		}
	}
	return nil
}
