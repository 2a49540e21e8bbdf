package nftables

import "github.com/magic-ip/magic-ip/agent/memo"

// Datapath writes Rulesets to the kernel, remembering the last one written: an unchanged Ruleset
// writes nothing, and a full sync reads the table back to find and repair drift.
type Datapath struct {
	Kernel *Kernel
	// Skipped counts the full syncs that did not read the table back: the ruleset generation said
	// nobody but us had committed anything since the last read (Kernel.ReadIfChanged).
	Skipped int

	applied *Ruleset
}

// Apply makes the kernel hold rs. full reads our table back first and reports how it differs
// from what the last Apply wrote (nothing on the first sync, when nothing vouches for the kernel),
// unless the ruleset generation says nobody but us committed anything since the last read
// (Kernel.ReadIfChanged): then the table holds what the last Apply wrote, and nothing is read.
// With the kernel known to hold the last ruleset, only the chains and elements that changed are
// written (a producer replaced by another: map elements only);
// otherwise (first sync, drift, a failed write) the whole table is rewritten. Either way it is one
// transaction.
func (d *Datapath) Apply(rs Ruleset, full bool) (wrote bool, drift []string, err error) {
	if full && d.applied != nil {
		o, changed, err := d.Kernel.ReadIfChanged()
		if err != nil {
			d.applied = nil
			return false, nil, err
		}
		if changed {
			drift = o.Drift(*d.applied)
		} else {
			d.Skipped++
		}
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

// ApplyPatch is Apply(rs, false) for a Ruleset that Renderer.Patch changed in place (p: what it
// changed). When the last Ruleset written holds the same Chains and Dispatch slices (the ones
// patched, so it no longer says what the kernel holds but for p), only what p lists is compared
// and written;
// otherwise (nothing written yet, or another Ruleset: nothing says how rs differs from it) the
// whole table is written. A failed write forgets what was written, as Apply does: the next sync
// rewrites the whole table.
func (d *Datapath) ApplyPatch(rs Ruleset, p Patch) (wrote bool, err error) {
	if d.applied == nil || !memo.Same(d.applied.Chains, rs.Chains) || !memo.Same(d.applied.Dispatch, rs.Dispatch) {
		d.applied = nil
		wrote, _, err = d.Apply(rs, false)
		return wrote, err
	}
	n, err := d.Kernel.WritePatch(rs, p)
	if err != nil {
		d.applied = nil
		return false, err
	}
	d.applied = &rs
	return n > 0, nil
}

// Cleanup deletes our table and forgets what was written.
func (d *Datapath) Cleanup() error {
	d.applied = nil
	return d.Kernel.Delete()
}
