package nftables

import (
	"errors"
	"fmt"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// NotRedirected ends the comment of each port's verdict rule in our input chain ("<key>: not
// redirected", as refusals writes it): the rule that refuses or drops the new connections no
// local producer took, and counts them.
const NotRedirected = ": not redirected"

// VerdictCount is one port's verdict rule as read back, with its packet counter.
type VerdictCount struct {
	// Key is the service's Key ("<magicip>:<port name>").
	Key      string
	Protocol string // "tcp" or "udp"
	Verdict  Verdict
	Packets  uint64
}

// VerdictCounts reads the verdict rules of our input chain with their counters, over netlink (one
// dump of that chain; no table or chain: none). Each rule says its port, protocol and verdict
// itself: the reader needs nothing of what was written.
func (k *Kernel) VerdictCounts() ([]VerdictCount, error) {
	rules, err := k.conn.GetRules(k.table, &nftables.Chain{Name: chainInput, Table: k.table})
	if errors.Is(err, unix.ENOENT) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list rules of chain %s in table %s: %w", chainInput, tableDesc, err)
	}
	var out []VerdictCount
	for _, r := range rules {
		if v, ok := verdictCount(r); ok {
			out = append(out, v)
		}
	}
	return out, nil
}

// verdictCount reads one rule of the input chain; ok is false for the rules that are not a port's
// verdict (the undeclared-port ones).
func verdictCount(r *nftables.Rule) (v VerdictCount, ok bool) {
	com, _ := userdata.GetString(r.UserData, userdata.TypeComment)
	if v.Key, ok = strings.CutSuffix(com, NotRedirected); !ok {
		return v, false
	}
	l4 := false // the last expression loaded meta l4proto: the next cmp is the protocol
	for _, e := range r.Exprs {
		switch e := e.(type) {
		case *expr.Meta:
			l4 = e.Key == expr.MetaKeyL4PROTO
			continue
		case *expr.Cmp:
			if l4 && len(e.Data) == 1 {
				v.Protocol = map[byte]string{unix.IPPROTO_TCP: "tcp", unix.IPPROTO_UDP: "udp"}[e.Data[0]]
			}
		case *expr.Counter:
			v.Packets = e.Packets
		case *expr.Reject:
			v.Verdict = Reject
		case *expr.Verdict:
			if e.Kind == expr.VerdictDrop {
				v.Verdict = Drop
			}
		}
		l4 = false
	}
	return v, v.Protocol != "" && v.Verdict != ""
}

// VerdictsChange reports whether writing rs rewrites the verdict rules (the input chain), which
// sets their counters back to 0: nothing vouches for the kernel yet (Apply writes the whole
// table), or the chain's rules differ from those last written. A full sync that finds drift
// rewrites the whole table too, which Apply reports as drift.
func (d *Datapath) VerdictsChange(rs Ruleset) bool {
	if d.applied == nil {
		return true
	}
	prev, next := d.applied.Chain(chainInput), rs.Chain(chainInput)
	return prev == nil || next == nil || !sameRules(prev.Rules, next.Rules)
}
