package agent

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"sync/atomic"

	"github.com/coreos/go-iptables/iptables"
)

// Iptables is the kernel side of the rules: one iptables-save or iptables-restore exec per call,
// counted, plus go-iptables for the cleanup path.
type Iptables struct {
	ipt   *iptables.IPTables
	execs atomic.Int64
}

// NewIptables checks that iptables is usable (go-iptables detects the binary and its version).
func NewIptables() (*Iptables, error) {
	ipt, err := iptables.New(iptables.Timeout(5))
	if err != nil {
		return nil, fmt.Errorf("iptables not usable (install the iptables package): %w", err)
	}
	for _, bin := range []string{"iptables-save", "iptables-restore"} {
		if _, err := exec.LookPath(bin); err != nil {
			return nil, fmt.Errorf("%s not found (install the iptables package): %w", bin, err)
		}
	}
	return &Iptables{ipt: ipt}, nil
}

// Execs is the number of iptables processes run so far by Save and Restore.
func (x *Iptables) Execs() int64 { return x.execs.Load() }

// Save returns iptables-save output for the nat and filter tables (one exec).
func (x *Iptables) Save(ctx context.Context) ([]byte, error) {
	x.execs.Add(1)
	var out, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "iptables-save")
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("iptables-save: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return out.Bytes(), nil
}

// Restore applies data with iptables-restore --noflush (one exec): only the chains and rules
// named in data change, atomically per table.
func (x *Iptables) Restore(ctx context.Context, data []byte) error {
	x.execs.Add(1)
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "iptables-restore", "--noflush", "--wait", "5")
	cmd.Stdin, cmd.Stderr = bytes.NewReader(data), &stderr
	if err := cmd.Run(); err != nil {
		return &RestoreError{Err: err, Stderr: strings.TrimSpace(stderr.String()), Input: data}
	}
	return nil
}

// RestoreError carries what iptables-restore said and the offending input line when it names one.
type RestoreError struct {
	Err    error
	Stderr string
	Input  []byte
}

func (e *RestoreError) Error() string {
	msg := fmt.Sprintf("iptables-restore: %v: %s", e.Err, e.Stderr)
	var line int
	if _, err := fmt.Sscanf(lastField(e.Stderr, "line: "), "%d", &line); err == nil && line > 0 {
		lines := strings.Split(string(e.Input), "\n")
		if line <= len(lines) {
			msg += fmt.Sprintf(" (line %d: %q)", line, lines[line-1])
		}
	}
	return msg
}

func (e *RestoreError) Unwrap() error { return e.Err }

func lastField(s, after string) string {
	if i := strings.LastIndex(s, after); i >= 0 {
		return s[i+len(after):]
	}
	return ""
}

// Observed is what iptables-save shows of ours.
type Observed struct {
	// Chains lists our chains per table; Rules counts the rules in each of them.
	Chains map[string][]string
	Rules  map[string]map[string]int
	// First is the target of the first rule of each built-in chain we jump from ("" if empty);
	// JumpRules are the rules there that jump to our chain, as printed after "-A CHAIN ".
	First     map[Jump]string
	JumpRules map[Jump][]string
}

// ParseSave reads iptables-save output.
func ParseSave(out []byte) Observed {
	o := Observed{Chains: map[string][]string{}, Rules: map[string]map[string]int{}, First: map[Jump]string{}, JumpRules: map[Jump][]string{}}
	table := ""
	seen := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "*"):
			table = line[1:]
			o.Rules[table] = map[string]int{}
			clear(seen)
		case strings.HasPrefix(line, ":"):
			if name, _, _ := strings.Cut(line[1:], " "); IsOurs(name) {
				o.Chains[table] = append(o.Chains[table], name)
			}
		case strings.HasPrefix(line, "-A "):
			f := strings.Fields(line)
			chain := f[1]
			if IsOurs(chain) {
				o.Rules[table][chain]++
				continue
			}
			target := ""
			if i := slices.Index(f, "-j"); i >= 0 && i+1 < len(f) {
				target = f[i+1]
			}
			for _, j := range Jumps {
				if j.Table != table || j.Chain != chain {
					continue
				}
				if !seen[chain] {
					o.First[j] = target
				}
				if target == j.Target {
					o.JumpRules[j] = append(o.JumpRules[j], strings.TrimPrefix(line, "-A "+chain+" "))
				}
			}
			seen[chain] = true
		}
	}
	return o
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

// Drifted reports how the kernel differs from rs (missing or extra chains, wrong rule counts,
// jumps missing or not first); empty means in place.
func (o Observed) Drifted(rs Ruleset) []string {
	var diffs []string
	for _, table := range []string{"nat", "filter"} {
		for _, c := range sortedKeys(rs.Chains[table]) {
			if !slices.Contains(o.Chains[table], c) {
				diffs = append(diffs, fmt.Sprintf("%s/%s missing", table, c))
			} else if got, want := o.Rules[table][c], len(rs.Chains[table][c]); got != want {
				diffs = append(diffs, fmt.Sprintf("%s/%s has %d rules, want %d", table, c, got, want))
			}
		}
		for _, c := range o.Chains[table] {
			if _, ok := rs.Chains[table][c]; !ok {
				diffs = append(diffs, fmt.Sprintf("%s/%s stale", table, c))
			}
		}
	}
	for _, f := range o.JumpFixes() {
		diffs = append(diffs, fmt.Sprintf("%s/%s jump to %s not first", f.Table, f.Chain, f.Target))
	}
	return diffs
}

// Cleanup removes our jumps and chains with go-iptables. Idempotent: what is absent is skipped.
func (x *Iptables) Cleanup() error {
	var errs []error
	for _, j := range Jumps {
		// A jump can only exist while its target chain does (and checking for it fails otherwise).
		if ok, err := x.ipt.ChainExists(j.Table, j.Target); err != nil || !ok {
			if err != nil {
				errs = append(errs, fmt.Errorf("check chain %s/%s: %w", j.Table, j.Target, err))
			}
			continue
		}
		if err := x.ipt.DeleteIfExists(j.Table, j.Chain, j.Spec()...); err != nil {
			errs = append(errs, fmt.Errorf("delete jump %s/%s: %w", j.Table, j.Chain, err))
		}
	}
	for _, table := range []string{"nat", "filter"} {
		chains, err := x.ipt.ListChains(table)
		if err != nil {
			errs = append(errs, fmt.Errorf("list %s chains: %w", table, err))
			continue
		}
		ours := slices.DeleteFunc(chains, func(c string) bool { return !IsOurs(c) })
		for _, c := range ours { // empty all first: they may refer to each other
			if err := x.ipt.ClearChain(table, c); err != nil {
				errs = append(errs, fmt.Errorf("flush %s/%s: %w", table, c, err))
			}
		}
		for _, c := range ours {
			if err := x.ipt.DeleteChain(table, c); err != nil {
				errs = append(errs, fmt.Errorf("delete %s/%s: %w", table, c, err))
			}
		}
	}
	return errors.Join(errs...)
}
