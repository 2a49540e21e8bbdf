package agent

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"

	"github.com/go-logr/logr"

	"github.com/magic-ip/magic-ip/api/v1alpha1"
)

// Syncer applies States to the node: addresses with netlink, rules with one iptables-restore,
// then stale addresses and stale UDP conntrack entries. It remembers what it applied, so a sync
// with nothing changed writes nothing.
type Syncer struct {
	Ipt   *Iptables
	Links *Links
	// ExternalInterfaces are the node's uplinks: traffic arriving there is never redirected.
	ExternalInterfaces []string
	Log                logr.Logger

	lastRules Ruleset
	// rulesKnown: the kernel held lastRules after our last write (false at first and after a failed
	// restore, which may have left one table written and the other not).
	rulesKnown bool
	lastState  *State
	dirty      bool
}

// SyncResult says what a sync did.
type SyncResult struct {
	// Wrote is true when iptables-restore ran.
	Wrote bool
	// Drift lists what a full sync found changed behind our back (and repaired).
	Drift []string
	// FailedInterfaces: interfaces the addresses could not be put on; their MagicIPs are not served.
	FailedInterfaces map[string]error
	// Unserved maps each MagicIP left out because of a failed interface to its interface.
	Unserved map[string]string
	// Flushed counts conntrack entries deleted.
	Flushed uint
	State   State
}

// Sync makes the node match st. full re-reads the kernel's rules to repair drift (at start and on
// every resync); otherwise the last applied rules are trusted and an unchanged State costs no exec.
func (s *Syncer) Sync(ctx context.Context, st State, full bool) (SyncResult, error) {
	res := SyncResult{FailedInterfaces: s.Links.Ensure(st.Addresses)}
	st, res.Unserved = withoutInterfaces(st, res.FailedInterfaces)
	res.State = st
	rules := Render(st, s.ExternalInterfaces)
	full = full || s.dirty || s.lastState == nil
	// The kernel is trusted to hold what we last applied, unless a full sync finds otherwise.
	input := rules.RestoreChanges(s.lastRules)
	if full {
		saved, err := s.Ipt.Save(ctx)
		if err != nil {
			s.dirty = true
			return res, err
		}
		var applied *Ruleset
		if s.rulesKnown {
			applied = &s.lastRules
		}
		res.Drift, input = ParseSave(saved).Resync(applied, rules, input)
	}
	if input != nil {
		s.Log.V(9).Info("iptables-restore", "input", string(input))
		if err := s.Ipt.Restore(ctx, input); err != nil {
			s.dirty, s.rulesKnown = true, false
			return res, err
		}
		res.Wrote = true
	}
	s.lastRules, s.rulesKnown = rules, true
	if err := s.Links.RemoveStale(st.Addresses); err != nil {
		s.dirty = true
		return res, err
	}
	res.Flushed = s.flushConntrack(st)
	s.lastState, s.dirty = &st, false
	return res, nil
}

// flushConntrack deletes UDP conntrack entries for every UDP service whose producers changed (all
// of them on the first sync: flows may predate the agent).
func (s *Syncer) flushConntrack(st State) uint {
	before := map[string][]Endpoint{}
	if s.lastState != nil {
		for _, svc := range s.lastState.Services {
			before[udpKey(svc)] = svc.Endpoints
		}
	}
	var total uint
	for _, svc := range st.Services {
		if svc.Protocol != v1alpha1.ProtocolUDP {
			continue
		}
		if old, ok := before[udpKey(svc)]; ok && s.lastState != nil && slices.Equal(old, svc.Endpoints) {
			continue
		}
		n, err := FlushConntrack(s.Links.h, svc.Address, svc.Port)
		if err != nil {
			s.Log.Error(err, "conntrack flush failed", "magicIP", svc.MagicIP, "port", svc.PortName)
		}
		total += n
	}
	return total
}

func udpKey(s Service) string { return fmt.Sprintf("%s:%d", s.Address, s.Port) }

// withoutInterfaces drops the addresses and services of MagicIPs whose interface failed.
func withoutInterfaces(st State, failed map[string]error) (State, map[string]string) {
	if len(failed) == 0 {
		return st, nil
	}
	gone := map[netip.Addr]string{}
	for ifname := range failed {
		for _, a := range st.Addresses[ifname] {
			gone[a] = ifname
		}
	}
	out := st
	out.Addresses = maps.Clone(st.Addresses)
	for ifname := range failed {
		delete(out.Addresses, ifname)
	}
	out.Services = nil
	unserved := map[string]string{}
	for _, svc := range st.Services {
		if ifname, ok := gone[svc.Address]; ok {
			unserved[svc.MagicIP] = ifname
			continue
		}
		out.Services = append(out.Services, svc)
	}
	return out, unserved
}

// Cleanup removes everything the agent owns on this node: the jumps to our chains and the chains,
// the addresses and the dummy link, and the UDP conntrack entries sent to those addresses. A
// failure stops nothing (addresses go even when iptables fails); every error is returned.
func Cleanup(ipt *Iptables, links *Links) error {
	return errors.Join(ipt.Cleanup(context.Background()), cleanupLinks(links))
}
