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
	in := d.convert.Input(st, d.Local)
	rs := d.render.Render(in)
	changes := d.NFT.VerdictsChange(rs)
	if d.Counters == nil || !(changes || full) {
		return d.NFT.Apply(rs, full)
	}
	err = d.Counters.aroundRewrite(ctx, DatapathNftables, func() (map[counterKey]uint64, error) {
		wrote, drift, err = d.NFT.Apply(rs, full)
		if err != nil || !(changes || len(drift) > 0) {
			return nil, err
		}
		return nftVerdictKeys(in), nil
	})
	return wrote, drift, err
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
		if i < len(c.from.Services) && sameService(s, c.from.Services[i]) {
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

// sameService reports whether a and b render alike in the nftables backend (its interface
// aside, which only the addresses use).
func sameService(a, b Service) bool {
	return a.MagicIP == b.MagicIP && a.PortName == b.PortName && a.Address == b.Address && a.Port == b.Port &&
		a.Protocol == b.Protocol && a.WhenNoProducer == b.WhenNoProducer && memo.Equal(a.Endpoints, b.Endpoints)
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
