package nftables

// Datapath writes Rulesets to the kernel, remembering the last one written: an unchanged Ruleset
// writes nothing, and a full sync reads the table back to find and repair drift.
type Datapath struct {
	Kernel *Kernel

	applied *Ruleset
}

// Apply makes the kernel hold rs. full reads our table back first and reports how it differs
// from what the last Apply wrote (nothing on the first sync, when nothing vouches for the kernel).
// With the kernel known to hold the last ruleset, only the chains and elements that changed are
// written (a producer replaced by another: map elements only);
// otherwise (first sync, drift, a failed write) the whole table is rewritten. Either way it is one
// transaction.
func (d *Datapath) Apply(rs Ruleset, full bool) (wrote bool, drift []string, err error) {
	if full && d.applied != nil {
		o, err := d.Kernel.Read()
		if err != nil {
			d.applied = nil
			return false, nil, err
		}
		drift = o.Drift(*d.applied)
	}
	if d.applied != nil && len(drift) == 0 {
		n, err := d.Kernel.WriteChanges(*d.applied, rs)
		if err != nil {
			d.applied = nil
			return false, nil, err
		}
		d.applied = &rs
		return n > 0, nil, nil
	}
	if err := d.Kernel.Write(rs); err != nil {
		d.applied = nil
		return false, drift, err
	}
	d.applied = &rs
	return true, drift, nil
}

// Cleanup deletes our table and forgets what was written.
func (d *Datapath) Cleanup() error {
	d.applied = nil
	return d.Kernel.Delete()
}
