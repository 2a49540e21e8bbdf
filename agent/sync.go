package agent

import (
	"context"
	"errors"
	"maps"
	"net/netip"
	"slices"

	"github.com/go-logr/logr"

	"github.com/magic-ip/magic-ip/agent/memo"
	"github.com/magic-ip/magic-ip/api/v1alpha1"
)

// Syncer applies States to the node: addresses with netlink, rules through its Datapath, then
// stale addresses; stale UDP conntrack entries are deleted right after, in the background (see
// flusher). It remembers what it applied, so a sync with nothing changed writes nothing.
type Syncer struct {
	Datapath Datapath
	// Retire are the other datapaths, whose rules an earlier run may have left (the node switched
	// --datapath): they are removed once, right after the first successful sync, so that the
	// switch leaves no moment without rules.
	Retire []Datapath
	Links  *Links
	Log    logr.Logger
	// Unsupported are the families this node does not program, with why (IPv6Unavailable,
	// IPv4Unavailable): their addresses in the States synced are left out and reported in
	// State.Unprogrammed.
	Unsupported map[Family]string
	// OnFlush, when set, is told of every background conntrack flush (from the flusher's
	// goroutine). Set it before the first Sync.
	OnFlush func(FlushResult)

	flusher   *flusher
	lastState *State
	dirty     bool
	// addrs are the addresses the last sync put on the node (before failed interfaces were left
	// out), when it put them all; nil otherwise. See ensureAddresses.
	addrs map[string][]netip.Addr
}

// SyncResult says what a sync did.
type SyncResult struct {
	// Wrote is true when the datapath wrote rules.
	Wrote bool
	// Drift lists what a full sync found changed behind our back (and repaired).
	Drift []string
	// FailedInterfaces: interfaces the addresses could not be put on; their MagicIPs are not served.
	FailedInterfaces map[string]error
	// Unserved maps each MagicIP left out because of a failed interface to its interface.
	Unserved map[string]string
	// FlushQueued counts the UDP address:ports whose conntrack entries this sync handed to the
	// background flush (WaitFlushes waits for it).
	FlushQueued int
	State       State
}

// Sync makes the node match st. full re-reads the kernel's rules and addresses to repair drift (at
// start and on every resync); otherwise the last applied rules and addresses are trusted and an
// unchanged State costs nothing.
func (s *Syncer) Sync(ctx context.Context, st State, full bool) (SyncResult, error) {
	for _, fam := range []Family{IPv4, IPv6} {
		if why := s.Unsupported[fam]; why != "" {
			st = withoutFamily(st, fam, why)
		}
	}
	full = full || s.dirty || s.lastState == nil
	trusted := !full && s.addrs != nil && sameAddresses(s.addrs, st.Addresses)
	want := st.Addresses
	res := SyncResult{FailedInterfaces: map[string]error{}}
	if !trusted {
		s.addrs = nil
		res.FailedInterfaces = s.Links.Ensure(want)
	}
	st, res.Unserved = withoutInterfaces(st, res.FailedInterfaces)
	res.State = st
	var err error
	res.Wrote, res.Drift, err = s.Datapath.Apply(ctx, st, full)
	if err != nil {
		s.dirty = true
		return res, err
	}
	if s.lastState == nil {
		// A MagicIP deleted or changed while no agent ran leaves its address behind (removed just
		// below) and its UDP flows: flush them all.
		s.flushOwned()
		s.retire(ctx)
	}
	if !trusted {
		if err := s.Links.RemoveStale(st.Addresses); err != nil {
			s.dirty = true
			return res, err
		}
		if len(res.FailedInterfaces) == 0 {
			s.addrs = want
		}
	}
	res.FlushQueued = s.queueFlush(st)
	s.lastState, s.dirty = &st, false
	return res, nil
}

// sameAddresses reports whether a and b hold the same addresses per interface, in the same order.
// A sync that is not full, after one that put every address on, trusts them as it trusts the
// rules: with the same addresses it neither lists nor adds any (listing them and the node's
// interfaces cost some 4 ms per sync at 1,000 MagicIPs); a full sync lists them and repairs.
func sameAddresses(a, b map[string][]netip.Addr) bool {
	return maps.EqualFunc(a, b, slices.Equal[[]netip.Addr])
}

// retire removes the rules of the other datapaths, once; a failure is logged, not retried.
func (s *Syncer) retire(ctx context.Context) {
	for _, d := range s.Retire {
		if err := d.Cleanup(ctx); err != nil {
			s.Log.Error(err, "removing the rules of the other datapath failed", "datapath", d.Name())
			continue
		}
		s.Log.V(2).Info("removed the rules of the other datapath, if any", "datapath", d.Name())
	}
	s.Retire = nil
}

// queueFlush hands to the background flush the UDP conntrack entries of every UDP service that
// changed: whose producers changed (and may have flows left on one gone, see staleFlows), and
// every one that disappeared (its MagicIP deleted, its address, port or protocol changed, lost to
// a conflict, invalid, or its interface failed), so that a client reusing its socket is
// redirected afresh or refused instead of following a stale entry. On the first sync every UDP
// service is flushed: flows may predate the agent. All of them in one pass over the conntrack
// table (see flushConntrackTo). It returns how many address:ports it queued.
func (s *Syncer) queueFlush(st State) int {
	changes := udpChanges(s.lastState, st)
	if len(changes) == 0 {
		return 0
	}
	targets := make([]netip.AddrPort, 0, len(changes))
	for _, svc := range changes {
		targets = append(targets, udpKey(svc))
	}
	if s.flusher == nil {
		s.flusher = newFlusher(openConntrack, s.flushed)
	}
	s.flusher.add(targets)
	return len(targets)
}

// flushed logs a background flush and tells OnFlush.
func (s *Syncer) flushed(r FlushResult) {
	if r.Err != nil {
		s.Log.Error(r.Err, "conntrack flush failed", "udpPorts", len(r.Targets), "first", r.Targets[0])
	} else {
		s.Log.V(2).Info("flushed UDP conntrack entries", "udpPorts", len(r.Targets), "deleted", r.Deleted, "took", r.Took)
	}
	if s.OnFlush != nil {
		s.OnFlush(r)
	}
}

// WaitFlushes returns once the conntrack flushes queued by the syncs so far have finished.
func (s *Syncer) WaitFlushes() {
	if s.flusher != nil {
		s.flusher.wait()
	}
}

// flushOwned deletes, before the first sync returns, the UDP conntrack entries of every address
// the node carries for us, all ports.
func (s *Syncer) flushOwned() {
	owned, err := s.Links.Owned()
	if err != nil {
		s.Log.Error(err, "conntrack flush of the addresses left by an earlier run skipped")
		return
	}
	n, err := flushUDPTo(s.Links.h, owned)
	if err != nil {
		s.Log.Error(err, "conntrack flush of the addresses left by an earlier run")
		return
	}
	s.Log.V(2).Info("flushed UDP conntrack entries of the addresses left by an earlier run", "deleted", n)
}

// udpChanges lists the UDP services (address and port) whose conntrack entries must go when the
// node moves from prev (nil: nothing known) to next: those of next whose endpoints differ from
// prev's (or all of next when prev is nil), then those of prev that next no longer has.
func udpChanges(prev *State, next State) []Service {
	if prev != nil {
		if out, ok := udpChangesInPlace(prev.Services, next.Services); ok {
			return out
		}
	}
	before := map[netip.AddrPort]Service{}
	if prev != nil {
		for _, svc := range prev.Services {
			if svc.Protocol == v1alpha1.ProtocolUDP {
				before[udpKey(svc)] = svc
			}
		}
	}
	var out []Service
	for _, svc := range next.Services {
		if svc.Protocol != v1alpha1.ProtocolUDP {
			continue
		}
		old, ok := before[udpKey(svc)]
		delete(before, udpKey(svc))
		if prev == nil || !ok || !sameProducers(old.Endpoints, svc.Endpoints) && staleFlows(old.Endpoints, svc.Endpoints) {
			out = append(out, svc)
		}
	}
	gone := slices.SortedFunc(maps.Keys(before), netip.AddrPort.Compare)
	for _, k := range gone {
		out = append(out, before[k])
	}
	return out
}

// udpChangesInPlace is udpChanges when prev and next hold the same services in the same order
// (a sync that changed producers only: ok), compared position by position without indexing them
// (a map of every UDP service took some 0.5 ms per sync at 1,000 MagicIPs × 3 ports), and
// without copying them (a copy of each service and its key took some 75 µs of the 1,000's
// change sync; now some 15 µs).
func udpChangesInPlace(prev, next []Service) (out []Service, ok bool) {
	if len(prev) != len(next) {
		return nil, false
	}
	for i := range next {
		old, svc := &prev[i], &next[i]
		if old.Protocol != svc.Protocol || old.Port != svc.Port || old.Address != svc.Address {
			return nil, false
		}
		if svc.Protocol == v1alpha1.ProtocolUDP && !sameProducers(old.Endpoints, svc.Endpoints) && staleFlows(old.Endpoints, svc.Endpoints) {
			out = append(out, *svc)
		}
	}
	return out, true
}

// sameProducers compares endpoints by pod and address: a producer that starts terminating while
// still in use keeps its flows (they would be redirected to it again anyway). The same list (kept
// from the last State) is not compared.
func sameProducers(a, b []Endpoint) bool {
	return memo.Same(a, b) || slices.EqualFunc(a, b, sameProducer)
}

// sameProducer tells two endpoints of one producer: the same pod at the same address.
func sameProducer(x, y Endpoint) bool { return x.Pod == y.Pod && x.Addr == y.Addr }

// staleFlows tells whether a UDP service whose producers went from a to b may have flows that
// no longer reach a producer of b: one of a is gone (its flows would keep going to it), or a was
// empty (the service refused or dropped, and its flows' conntrack entries carry no translation,
// so the new DNAT would never apply to them). Producers only added beside those in use leave
// every flow on a producer that still serves, as kube-proxy does (it clears UDP entries of
// removed endpoints and of services that had none): no flush, whose dump walks the kernel's
// whole conntrack hash (some 9 ms on a 2-core VM, every namespace's buckets) — in a rollout, the
// new producer's Ready costs none, the old one's NotReady one.
func staleFlows(a, b []Endpoint) bool {
	if len(a) == 0 {
		return true
	}
	for _, x := range a {
		if !slices.ContainsFunc(b, func(y Endpoint) bool { return sameProducer(x, y) }) {
			return true
		}
	}
	return false
}

func udpKey(s Service) netip.AddrPort { return netip.AddrPortFrom(s.Address, uint16(s.Port)) }

// withoutInterfaces drops the services whose interface failed, and those interfaces' addresses.
// Services of the same address on a working interface stay, with their rules: an address is never
// left on the node without its verdicts.
func withoutInterfaces(st State, failed map[string]error) (State, map[string]string) {
	if len(failed) == 0 {
		return st, nil
	}
	out := st
	out.Addresses = maps.Clone(st.Addresses)
	for ifname := range failed {
		delete(out.Addresses, ifname)
	}
	out.Services = nil
	unserved := map[string]string{}
	for _, svc := range st.Services {
		if _, bad := failed[svc.Interface]; bad {
			unserved[svc.MagicIP] = svc.Interface
			continue
		}
		out.Services = append(out.Services, svc)
	}
	return out, unserved
}

// Cleanup removes everything the agent owns on this node: the rules of each datapath given (for
// iptables the jumps to our chains and the chains, for nftables our table), the addresses and the
// dummy link, and the UDP conntrack entries sent to those addresses. A failure stops nothing
// (addresses go even when the rules fail); every error is returned.
func Cleanup(links *Links, dps ...Datapath) error {
	var errs []error
	for _, dp := range dps {
		errs = append(errs, dp.Cleanup(context.Background()))
	}
	return errors.Join(append(errs, cleanupLinks(links))...)
}
