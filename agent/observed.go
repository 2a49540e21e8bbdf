package agent

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
)

// Observed is what iptables-save shows of ours in nat and filter.
type Observed struct {
	// Chains lists our chains per table, as iptables-save declared them.
	Chains map[string][]string
	// Rules holds the rules of each of our chains per table, as iptables-save printed them
	// (after "-A CHAIN "); a chain without rules has none.
	Rules map[string]map[string][]string
	// First is the target of the first rule of each built-in chain we jump from ("" if empty);
	// JumpRules are the rules there that jump to our chain, as printed after "-A CHAIN ".
	First     map[Jump]string
	JumpRules map[Jump][]string
	// Entries are the rules of built-in chains that jump (or go) to a chain of ours, whatever
	// their comment: ours, duplicates, an older version's. Cleanup deletes them.
	Entries []Entry
	// Foreign are the rules of other chains (not built-in, not ours) that jump to a chain of
	// ours: that chain cannot be deleted while they exist, and they are not ours to delete.
	Foreign []Entry
}

// Entry is one rule of a chain that is not ours, as iptables-save printed it after "-A CHAIN ".
type Entry struct {
	Table, Chain, Rule string
}

// ParseSave reads iptables-save output. Only nat and filter rules are read (we own nothing in the
// other tables), and rules of foreign chains that do not name a chain of ours are skipped without
// being split, so 10,000 kube-proxy rules cost a substring check each.
func ParseSave(out []byte) Observed {
	p := saveParser{o: Observed{Chains: map[string][]string{}, Rules: map[string]map[string][]string{},
		First: map[Jump]string{}, JumpRules: map[Jump][]string{}}, builtin: map[string]bool{}, seen: map[string]bool{}}
	// One copy of the text; lines and the rules kept are substrings of it.
	for rest := string(out); rest != ""; {
		var line string
		line, rest, _ = strings.Cut(rest, "\n")
		p.line(line)
	}
	return p.o
}

type saveParser struct {
	o     Observed
	table string
	// builtin: the current table's built-in chains (declared with a policy, not "-"); seen: those
	// of them with a rule read already.
	builtin, seen map[string]bool
}

func (p *saveParser) line(line string) {
	switch {
	case strings.HasPrefix(line, "*"):
		p.table = line[1:]
		p.o.Rules[p.table] = map[string][]string{}
		clear(p.builtin)
		clear(p.seen)
	case strings.HasPrefix(line, ":"):
		name, rest, _ := strings.Cut(line[1:], " ")
		if IsOurs(name) {
			p.o.Chains[p.table] = append(p.o.Chains[p.table], name)
		} else if !strings.HasPrefix(rest, "-") {
			p.builtin[name] = true
		}
	case strings.HasPrefix(line, "-A ") && slices.Contains(tables, p.table):
		chain, rule, _ := strings.Cut(line[len("-A "):], " ")
		p.rule(chain, rule)
	}
}

func (p *saveParser) rule(chain, rule string) {
	if IsOurs(chain) {
		p.o.Rules[p.table][chain] = append(p.o.Rules[p.table][chain], rule)
		return
	}
	builtin := p.builtin[chain]
	if !builtin && !strings.Contains(rule, ChainPrefix) {
		return
	}
	target := ruleTarget(rule)
	if builtin {
		for _, j := range Jumps {
			if j.Table != p.table || j.Chain != chain {
				continue
			}
			if !p.seen[chain] {
				p.o.First[j] = target
			}
			if target == j.Target {
				p.o.JumpRules[j] = append(p.o.JumpRules[j], rule)
			}
		}
		p.seen[chain] = true
	}
	switch e := (Entry{Table: p.table, Chain: chain, Rule: rule}); {
	case !IsOurs(target):
	case builtin:
		p.o.Entries = append(p.o.Entries, e)
	default:
		p.o.Foreign = append(p.o.Foreign, e)
	}
}

// ruleTarget is the chain or target a rule jumps or goes to ("" if none).
func ruleTarget(rule string) string {
	toks := splitRule(rule)
	for i := len(toks) - 2; i >= 0; i-- {
		switch t := toks[i]; {
		case t.quoted:
		case t.s == "-j", t.s == "--jump", t.s == "-g", t.s == "--goto":
			return toks[i+1].s
		}
	}
	return ""
}

// JumpFixes lists the jumps that are missing or not first.
func (o Observed) JumpFixes() []JumpFix {
	var fixes []JumpFix
	for _, j := range Jumps {
		if o.First[j] != j.Target {
			fixes = append(fixes, JumpFix{Jump: j, Delete: o.JumpRules[j]})
		}
	}
	return fixes
}

// Drifted reports how our part of the kernel differs from applied, the rules we last applied:
// chains of ours missing or stale, rules edited, added or deleted (the first difference in each
// chain, the rule we wrote next to the one found), jumps missing or not first. Rules compare by
// content, whatever iptables-save changes in the way it prints them back (see canonicalRule).
// Empty means in place.
func (o Observed) Drifted(applied Ruleset) []string {
	var diffs []string
	for _, table := range tables {
		declared := map[string]bool{}
		for _, c := range o.Chains[table] {
			declared[c] = true
		}
		for _, c := range sortedKeys(applied.Chains[table]) {
			if !declared[c] {
				diffs = append(diffs, fmt.Sprintf("%s/%s missing", table, c))
			} else if d := diffRules(applied.Chains[table][c], o.Rules[table][c]); d != "" {
				diffs = append(diffs, fmt.Sprintf("%s/%s %s", table, c, d))
			}
		}
		for _, c := range o.Chains[table] {
			if _, ok := applied.Chains[table][c]; !ok {
				diffs = append(diffs, fmt.Sprintf("%s/%s stale", table, c))
			}
		}
	}
	for _, f := range o.JumpFixes() {
		if len(f.Delete) == 0 {
			diffs = append(diffs, fmt.Sprintf("%s/%s jump to %s missing", f.Table, f.Chain, f.Target))
		} else {
			diffs = append(diffs, fmt.Sprintf("%s/%s jump to %s not first (first: %s)", f.Table, f.Chain, f.Target, o.First[f.Jump]))
		}
	}
	return diffs
}

// diffRules describes the first difference between the rules we wrote and those found ("" if
// none), with both rules as they were written and printed.
func diffRules(want, got []string) string {
	counts := ""
	if len(want) != len(got) {
		counts = fmt.Sprintf(" (%d rules found, %d written)", len(got), len(want))
	}
	for i := range max(len(want), len(got)) {
		switch {
		case i >= len(got):
			return fmt.Sprintf("rule %d: wrote %q, found none%s", i+1, want[i], counts)
		case i >= len(want):
			return fmt.Sprintf("rule %d: found %q, wrote none%s", i+1, got[i], counts)
		case want[i] != got[i] && canonicalRule(want[i]) != canonicalRule(got[i]):
			return fmt.Sprintf("rule %d: wrote %q, found %q%s", i+1, want[i], got[i], counts)
		}
	}
	return ""
}

// Resync decides a full sync: it reports drift and returns the restore input. applied is what our
// last write left in our chains, nil when nothing vouches for the kernel (the first sync, after a
// failed restore: a table may hold half of it). Drift is measured against applied, never against
// next: next differs from applied by our own change, which changes (the incremental input from
// applied to next) carries, so a change in flight is neither reported nor repaired as drift. On
// drift, or with nothing to vouch for, every chain of ours is rewritten and the jumps put first.
func (o Observed) Resync(applied *Ruleset, next Ruleset, changes []byte) (drift []string, input []byte) {
	if applied != nil {
		if drift = o.Drifted(*applied); len(drift) == 0 {
			return nil, changes
		}
	}
	return drift, next.Restore(o.Chains, o.JumpFixes())
}

// CleanupInput renders the iptables-restore input that removes what is ours from tables: our
// chains declared (so emptied), each entry deleted as iptables-save printed it, and our chains
// deleted but those a foreign chain still jumps to. Nil when there is nothing of ours.
func (o Observed) CleanupInput(tables ...string) []byte {
	var b bytes.Buffer
	for _, table := range tables {
		entries := slices.DeleteFunc(slices.Clone(o.Entries), func(e Entry) bool { return e.Table != table })
		if len(o.Chains[table])+len(entries) == 0 {
			continue
		}
		fmt.Fprintf(&b, "*%s\n", table)
		for _, c := range o.Chains[table] {
			fmt.Fprintf(&b, ":%s - [0:0]\n", c)
		}
		for _, e := range entries {
			fmt.Fprintf(&b, "-D %s %s\n", e.Chain, e.Rule)
		}
		for _, c := range o.Chains[table] {
			if !o.jumpedToByForeign(table, c) {
				fmt.Fprintf(&b, "-X %s\n", c)
			}
		}
		b.WriteString("COMMIT\n")
	}
	if b.Len() == 0 {
		return nil
	}
	return b.Bytes()
}

func (o Observed) jumpedToByForeign(table, chain string) bool {
	return slices.ContainsFunc(o.Foreign, func(e Entry) bool { return e.Table == table && ruleTarget(e.Rule) == chain })
}

// keptChains reports the chains of ours that cleanup leaves (emptied) because a foreign chain
// jumps to them.
func (o Observed) keptChains() []error {
	var errs []error
	for _, e := range o.Foreign {
		errs = append(errs, fmt.Errorf("%s/%s emptied but not deleted: the foreign rule \"-A %s %s\" jumps to it",
			e.Table, ruleTarget(e.Rule), e.Chain, e.Rule))
	}
	return errs
}
