package nftables

// Datapath writes Rulesets to the kernel, remembering the last one written: an unchanged Ruleset
// writes nothing, and a full sync reads the table back to find and repair drift.
type Datapath struct {
	Kernel *Kernel

	applied *Ruleset
	text    string
}

// Apply makes the kernel hold rs. full reads our table back first and reports how it differs
// from what the last Apply wrote (nothing on the first sync, when nothing vouches for the kernel);
// any difference, or a change of rs, rewrites the whole table in one transaction.
func (d *Datapath) Apply(rs Ruleset, full bool) (wrote bool, drift []string, err error) {
	text := rs.Text()
	if full && d.applied != nil {
		o, err := d.Kernel.Read()
		if err != nil {
			d.applied = nil
			return false, nil, err
		}
		drift = o.Drift(*d.applied)
	}
	if d.applied != nil && len(drift) == 0 && text == d.text {
		return false, nil, nil
	}
	if err := d.Kernel.Write(rs); err != nil {
		d.applied = nil
		return false, drift, err
	}
	d.applied, d.text = &rs, text
	return true, drift, nil
}

// Cleanup deletes our table and forgets what was written.
func (d *Datapath) Cleanup() error {
	d.applied = nil
	return d.Kernel.Delete()
}
