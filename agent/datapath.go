package agent

import (
	"cmp"
	"context"
	"errors"
	"fmt"

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
	// Prepare readies what the next Apply's write needs ahead of its State, while the caller waits
	// for something slower (a list from the API server). The next Apply uses it or lets it go.
	Prepare(ctx context.Context)
	// Cleanup removes every rule of this backend, and nothing else.
	Cleanup(ctx context.Context) error
	// Execs counts the processes run so far (0 for a backend that only uses netlink).
	Execs() int64
	// Collectors are the backend's own metrics (the iptables verdict counters).
	Collectors() []prometheus.Collector
	// IPv6 says why the backend cannot program IPv6 magic addresses on this node (nil: it can).
	IPv6() error
}

// IptablesDatapath renders States into our iptables chains and applies them with one
// iptables-restore (only the chains that changed; every chain after drift), and the IPv6 part
// with one ip6tables-restore the same way.
type IptablesDatapath struct {
	Ipt *Iptables
	// Ipt6 writes the IPv6 rules (nil: IPv6 is not programmed, NoIpt6 says why).
	Ipt6   *Iptables
	NoIpt6 error
	// Local tells node-local traffic from off-node traffic, which is never redirected.
	Local *LocalDetector
	Log   logr.Logger
	// Counters, when set, reads a family's verdict rules' counters before a restore resets them
	// (the source is the command: iptables or ip6tables).
	Counters *NoProducerCounters

	// last holds per family the rules the kernel held after our last write (none at first and
	// after a failed restore, which may have left one table written and the other not).
	last map[Family]Ruleset
	// no6: ip6tables holds nothing of ours, and the State no IPv6 address: IPv6 costs nothing.
	no6 bool
	// render keeps, per family, the lines rendered last (see Renderer).
	render map[Family]*Renderer
}

// Name implements Datapath.
func (d *IptablesDatapath) Name() string { return DatapathIptables }

// Execs implements Datapath.
func (d *IptablesDatapath) Execs() int64 {
	n := d.Ipt.Execs()
	if d.Ipt6 != nil {
		n += d.Ipt6.Execs()
	}
	return n
}

// Cleanup implements Datapath: both families.
func (d *IptablesDatapath) Cleanup(ctx context.Context) error {
	err := d.Ipt.Cleanup(ctx)
	if d.Ipt6 != nil {
		err = errors.Join(err, d.Ipt6.Cleanup(ctx))
	}
	return err
}

// IPv6 implements Datapath: ip6tables must be usable.
func (d *IptablesDatapath) IPv6() error {
	if d.Ipt6 != nil {
		return nil
	}
	return cmp.Or(d.NoIpt6, errors.New("ip6tables not opened"))
}

// Collectors implements Datapath.
func (d *IptablesDatapath) Collectors() []prometheus.Collector {
	if d.Counters == nil {
		return nil
	}
	return []prometheus.Collector{d.Counters}
}

// Prepare implements Datapath: the next write's restore processes are started now
// (Iptables.Prestart), for each family in use.
func (d *IptablesDatapath) Prepare(ctx context.Context) {
	d.Ipt.Prestart(ctx)
	if d.Ipt6 != nil && !d.no6 {
		d.Ipt6.Prestart(ctx)
	}
}

// Apply implements Datapath: IPv4 with iptables, then IPv6 with ip6tables when it is there; each
// family's drift is named after its command. While no MagicIP has an IPv6 address, ip6tables is
// emptied of our rules once and then left alone: an IPv4-only node pays no ip6tables process. A
// restore process that Prepare started is used, or ended unused.
func (d *IptablesDatapath) Apply(ctx context.Context, st State, full bool) (bool, []string, error) {
	defer d.Ipt.Release()
	if d.Ipt6 != nil {
		defer d.Ipt6.Release()
	}
	wrote, drift, err := d.apply(ctx, d.Ipt, IPv4, d.Counters, st, full)
	if err != nil || d.Ipt6 == nil {
		return wrote, drift, err
	}
	if !IPv6.inState(st) {
		return wrote, drift, d.without6(ctx)
	}
	d.no6 = false
	wrote6, drift6, err := d.apply(ctx, d.Ipt6, IPv6, d.Counters, st, full)
	for _, dr := range drift6 {
		drift = append(drift, "ip6tables: "+dr)
	}
	return wrote || wrote6, drift, err
}

// without6 removes our ip6tables rules, unless they are known gone; the counters of their verdict
// rules are read first and no longer after.
func (d *IptablesDatapath) without6(ctx context.Context) error {
	if d.no6 {
		return nil
	}
	err := d.Counters.aroundRewrite(ctx, d.Ipt6.Name(), func() (map[counterKey]uint64, error) {
		return map[counterKey]uint64{}, d.Ipt6.Cleanup(ctx)
	})
	if err != nil {
		return fmt.Errorf("removing the IPv6 rules no MagicIP needs: %w", err)
	}
	delete(d.last, IPv6)
	d.no6 = true
	return nil
}

// apply writes the rules of one family: the incremental restore input from the last rules
// applied, or, on a full sync, what the save reads back compared (see Observed.Resync).
func (d *IptablesDatapath) apply(ctx context.Context, ipt *Iptables, fam Family, counters *NoProducerCounters, st State, full bool) (bool, []string, error) {
	if d.last == nil {
		d.last = map[Family]Ruleset{}
	}
	r := d.render[fam]
	if r == nil {
		if d.render == nil {
			d.render = map[Family]*Renderer{}
		}
		r = &Renderer{Family: fam}
		d.render[fam] = r
	}
	rules := r.Render(st, d.Local)
	prev, known := d.last[fam]
	// The kernel is trusted to hold what we last applied, unless a full sync finds otherwise.
	input := rules.RestoreChanges(prev)
	var drift []string
	if full || !known {
		saved, err := ipt.Save(ctx)
		if err != nil {
			return false, nil, err
		}
		var applied *Ruleset
		if known {
			applied = &prev
		}
		drift, input = ParseSave(saved).Resync(applied, rules, input)
	}
	if input == nil {
		d.last[fam] = rules
		return false, drift, nil
	}
	d.Log.V(9).Info(ipt.Name()+"-restore", "input", string(input))
	if err := counters.aroundRestore(ctx, ipt.Name(), input, ipt.Restore); err != nil {
		delete(d.last, fam)
		return false, drift, err
	}
	d.last[fam] = rules
	return true, drift, nil
}
