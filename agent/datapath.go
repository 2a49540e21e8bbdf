package agent

import (
	"context"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
)

// Datapath writes the rules of a State into the kernel: one implementation per backend
// (iptables, nftables). Addresses, conntrack and the State itself are the Syncer's, shared by all.
type Datapath interface {
	// Name is the backend's name, as --datapath spells it.
	Name() string
	// Apply makes the kernel hold the rules of st. full re-reads the kernel and repairs drift,
	// which it reports; otherwise what the last successful Apply wrote is trusted, and an
	// unchanged State writes nothing. wrote: the kernel was written.
	Apply(ctx context.Context, st State, full bool) (wrote bool, drift []string, err error)
	// Cleanup removes every rule of this backend, and nothing else.
	Cleanup(ctx context.Context) error
	// Execs counts the processes run so far (0 for a backend that only uses netlink).
	Execs() int64
	// Collectors are the backend's own metrics (the iptables verdict counters).
	Collectors() []prometheus.Collector
}

// IptablesDatapath renders States into our iptables chains and applies them with one
// iptables-restore (only the chains that changed; every chain after drift).
type IptablesDatapath struct {
	Ipt *Iptables
	// Local tells node-local traffic from off-node traffic, which is never redirected.
	Local *LocalDetector
	Log   logr.Logger
	// Counters, when set, reads the verdict rules' counters before a restore resets them.
	Counters *NoProducerCounters

	render    Renderer
	lastRules Ruleset
	// rulesKnown: the kernel held lastRules after our last write (false at first and after a failed
	// restore, which may have left one table written and the other not).
	rulesKnown bool
}

// Name implements Datapath.
func (d *IptablesDatapath) Name() string { return DatapathIptables }

// Execs implements Datapath.
func (d *IptablesDatapath) Execs() int64 { return d.Ipt.Execs() }

// Cleanup implements Datapath.
func (d *IptablesDatapath) Cleanup(ctx context.Context) error { return d.Ipt.Cleanup(ctx) }

// Collectors implements Datapath.
func (d *IptablesDatapath) Collectors() []prometheus.Collector {
	if d.Counters == nil {
		return nil
	}
	return []prometheus.Collector{d.Counters}
}

// Apply implements Datapath: the incremental restore input from the last rules applied, or, on a
// full sync, iptables-save read back and compared (see Observed.Resync).
func (d *IptablesDatapath) Apply(ctx context.Context, st State, full bool) (bool, []string, error) {
	rules := d.render.Render(st, d.Local)
	// The kernel is trusted to hold what we last applied, unless a full sync finds otherwise.
	input := rules.RestoreChanges(d.lastRules)
	var drift []string
	if full || !d.rulesKnown {
		saved, err := d.Ipt.Save(ctx)
		if err != nil {
			return false, nil, err
		}
		var applied *Ruleset
		if d.rulesKnown {
			applied = &d.lastRules
		}
		drift, input = ParseSave(saved).Resync(applied, rules, input)
	}
	if input == nil {
		d.lastRules, d.rulesKnown = rules, true
		return false, drift, nil
	}
	d.Log.V(9).Info("iptables-restore", "input", string(input))
	if err := d.Counters.aroundRestore(ctx, input, d.Ipt.Restore); err != nil {
		d.rulesKnown = false
		return false, drift, err
	}
	d.lastRules, d.rulesKnown = rules, true
	return true, drift, nil
}
