package agent

import (
	"context"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/magic-ip/magic-ip/agent/memo"
	"github.com/magic-ip/magic-ip/agent/nftables"
	"github.com/magic-ip/magic-ip/api/v1alpha1"
)

// NftablesDatapath renders States into our own nftables table (inet magic-ip: IPv4 and IPv6) and
// writes it in one netlink transaction per sync.
type NftablesDatapath struct {
	NFT   *nftables.Datapath
	Local *LocalDetector
	// Counters, when set, reads the verdict rules' counters before a write that rewrites them.
	// Its Read must use a netlink socket of its own (scrapes run beside syncs): see
	// nftablesCounters.
	Counters *NoProducerCounters

	// render keeps the rules rendered last (see nftables.Renderer); convert, the Input.
	render  nftables.Renderer
	convert NftablesConverter
}

// Name implements Datapath.
func (d *NftablesDatapath) Name() string { return DatapathNftables }

// Execs implements Datapath: netlink only, no process.
func (d *NftablesDatapath) Execs() int64 { return 0 }

// Collectors implements Datapath.
func (d *NftablesDatapath) Collectors() []prometheus.Collector {
	if d.Counters == nil {
		return nil
	}
	return []prometheus.Collector{d.Counters}
}

// IPv6 implements Datapath: the inet table holds both families.
func (d *NftablesDatapath) IPv6() error { return nil }

// Prepare implements Datapath: a write is one netlink transaction, with nothing to start ahead.
func (d *NftablesDatapath) Prepare(context.Context) {}

// Cleanup implements Datapath: our table goes, nothing else is touched.
func (d *NftablesDatapath) Cleanup(context.Context) error { return d.NFT.Cleanup() }

// Apply implements Datapath. A write that may rewrite the verdict rules (they change, or a full
// sync may repair drift by rewriting the table) runs within Counters.aroundRewrite, so what they
// counted is kept; the series restart from the rules written only when they were rewritten.
func (d *NftablesDatapath) Apply(ctx context.Context, st State, full bool) (wrote bool, drift []string, err error) {
	in, rs, write := d.prepare(st, full)
	changes := d.NFT.VerdictsChange(rs)
	if d.Counters == nil || !(changes || full) {
		return write()
	}
	err = d.Counters.aroundRewrite(ctx, DatapathNftables, func() (map[counterKey]uint64, error) {
		wrote, drift, err = write()
		if err != nil || !(changes || len(drift) > 0) {
			return nil, err
		}
		return nftVerdictKeys(in), nil
	})
	return wrote, drift, err
}

// prepare converts and renders st, and returns how to write it. A sync that is not full and
// changed producers only is patched (NftablesConverter.Patch, Renderer.Patch, Datapath.ApplyPatch):
// its cost follows the services changed, not every one the node serves. Anything else (a full
// sync that may repair drift, services or addresses added or removed, another local-traffic
// detection) is converted and rendered whole (Input, Render) and applied with Apply.
func (d *NftablesDatapath) prepare(st State, full bool) (nftables.Input, nftables.Ruleset, func() (bool, []string, error)) {
	var in nftables.Input
	if full {
		in = d.convert.Input(st, d.Local)
	} else {
		var changed []int
		var ok bool
		if in, changed, ok = d.convert.Patch(st, d.Local); ok {
			if rs, p, ok := d.render.Patch(in, changed); ok {
				return in, rs, func() (bool, []string, error) {
					wrote, err := d.NFT.ApplyPatch(rs, p)
					return wrote, nil, err
				}
			}
		}
	}
	rs := d.render.Render(in)
	return in, rs, func() (bool, []string, error) { return d.NFT.Apply(rs, full) }
}

// nftablesCounters makes c read the verdict rules of our table through k (a netlink socket of
// its own).
func nftablesCounters(c *NoProducerCounters, k *nftables.Kernel) *NoProducerCounters {
	c.Read = func(context.Context, string) (map[counterKey]uint64, error) { // one source: the table
		vcs, err := k.VerdictCounts()
		if err != nil {
			return nil, err
		}
		counts := make(map[counterKey]uint64, len(vcs))
		for _, v := range vcs {
			counts[nftCounterKey(v.Key, v.Protocol, v.Verdict)] += v.Packets
		}
		return counts, nil
	}
	return c
}

// nftVerdictKeys are the series of the verdict rules rendered from in, at 0.
func nftVerdictKeys(in nftables.Input) map[counterKey]uint64 {
	keys := make(map[counterKey]uint64, len(in.Services))
	for _, s := range in.Services {
		keys[nftCounterKey(s.Key, s.Protocol, s.Verdict)] = 0
	}
	return keys
}

// nftCounterKey names the series of a verdict rule as the iptables datapath does.
func nftCounterKey(key, protocol string, v nftables.Verdict) counterKey {
	k := counterKey{Protocol: strings.ToUpper(protocol), Action: "refused"}
	k.MagicIP, k.Port, _ = strings.Cut(key, ":")
	if v == nftables.Drop {
		k.Action = "dropped"
	}
	return k
}

// NftablesInput is what the nftables backend needs of a State and the local-traffic detector
// (both families).
func NftablesInput(st State, local *LocalDetector) nftables.Input {
	in := nftables.Input{Addresses: addresses(st), Local: nftLocal(local), Services: make([]nftables.Service, 0, len(st.Services))}
	for _, s := range st.Services {
		in.Services = append(in.Services, nftService(s))
	}
	return in
}

// nftService is what the nftables backend needs of one service.
func nftService(s Service) nftables.Service {
	svc := nftables.Service{Key: s.Key(), Addr: s.Address, Port: uint16(s.Port), Protocol: proto(s.Protocol), Verdict: nftables.Reject}
	if s.WhenNoProducer == v1alpha1.Drop {
		svc.Verdict = nftables.Drop
	}
	for _, ep := range s.Endpoints {
		e := nftables.Endpoint{Pod: ep.Pod, Addr: ep.Addr, Remote: ep.Node != ""}
		switch {
		case ep.Terminating:
			e.Note = "terminating, no Ready producer"
		case ep.Node != "":
			e.Note = "fallback to node " + ep.Node
		}
		svc.Endpoints = append(svc.Endpoints, e)
	}
	return svc
}

// NftablesConverter converts as NftablesInput does, reusing what it converted last: each service
// equal to the one at the same place in the last State (its endpoints the same slice, which the
// Renderer then compares without reading), and the addresses while the State's and its services'
// are unchanged. A sync that changes one producer converts one service. The zero value is ready.
type NftablesConverter struct {
	from State
	last nftables.Input
}

func (c *NftablesConverter) Input(st State, local *LocalDetector) nftables.Input {
	in := nftables.Input{Local: nftLocal(local), Services: make([]nftables.Service, len(st.Services))}
	sameAddrs := len(st.Services) == len(c.from.Services) && sameAddresses(st.Addresses, c.from.Addresses)
	for i, s := range st.Services {
		if i < len(c.from.Services) && sameService(&st.Services[i], &c.from.Services[i]) {
			in.Services[i] = c.last.Services[i]
			continue
		}
		in.Services[i] = nftService(s)
		sameAddrs = sameAddrs && i < len(c.from.Services) && s.Address == c.from.Services[i].Address
	}
	if sameAddrs {
		in.Addresses = c.last.Addresses
	} else {
		in.Addresses = addresses(st)
	}
	c.from, c.last = st, in
	return in
}

// Patch converts st as Input does when st differs from the last State converted only in the
// producers of some services, each with producers or without as before (the same services in the
// same order, the same addresses): it converts those services alone, into the last Input's
// Services in place (no copy of the others), and lists their indexes for Renderer.Patch (ok).
// Otherwise it converts as Input does, into new Services (ok false).
func (c *NftablesConverter) Patch(st State, local *LocalDetector) (in nftables.Input, changed []int, ok bool) {
	if changed, ok = c.changed(st); !ok {
		return c.Input(st, local), nil, false
	}
	for _, i := range changed {
		c.last.Services[i] = nftService(st.Services[i])
	}
	c.from, c.last.Local = st, nftLocal(local)
	return c.last, changed, true
}

// changed lists the services of st whose producers differ from those of the last State
// converted; ok is false when anything else differs (or nothing was converted yet).
func (c *NftablesConverter) changed(st State) (changed []int, ok bool) {
	if c.last.Services == nil || len(st.Services) != len(c.from.Services) || !sameAddresses(st.Addresses, c.from.Addresses) {
		return nil, false
	}
	for i := range st.Services {
		s, p := &st.Services[i], &c.from.Services[i]
		if sameService(s, p) {
			continue
		}
		if !sameButProducers(s, p) {
			return nil, false
		}
		changed = append(changed, i)
	}
	return changed, true
}

// sameButProducers reports whether a and b render alike but for their producers, which both have
// or both lack.
func sameButProducers(a, b *Service) bool {
	return (len(a.Endpoints) == 0) == (len(b.Endpoints) == 0) && sameKey(a, b)
}

// sameService reports whether a and b render alike in the nftables backend (its interface
// aside, which only the addresses use).
func sameService(a, b *Service) bool {
	return memo.Equal(a.Endpoints, b.Endpoints) && sameKey(a, b)
}

// sameKey reports whether a and b are the same service with the same verdict (producers aside).
func sameKey(a, b *Service) bool {
	return a.Address == b.Address && a.Port == b.Port && a.MagicIP == b.MagicIP && a.PortName == b.PortName &&
		a.Protocol == b.Protocol && a.WhenNoProducer == b.WhenNoProducer
}

func nftLocal(d *LocalDetector) nftables.Local {
	switch {
	case d == nil:
		return nftables.Local{All: true}
	case d.Mode == NodeAddresses:
		return nftables.Local{All: true, External: d.External}
	}
	var l nftables.Local
	for _, m := range d.Local {
		if m.Source.IsValid() {
			l.Sources = append(l.Sources, m.Source)
		} else {
			l.Interfaces = append(l.Interfaces, m.Interface)
		}
	}
	return l
}
