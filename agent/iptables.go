package agent

import (
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

// tables are the tables we own chains in, in the order we write them.
var tables = []string{"nat", "filter"}

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

// Save returns iptables-save output for the nat and filter tables, one exec per table: the other
// tables (mangle, raw, security: a CNI's, a firewall's, however large) are never read.
func (x *Iptables) Save(ctx context.Context) ([]byte, error) {
	return x.save(ctx, tables...)
}

func (x *Iptables) save(ctx context.Context, tables ...string) ([]byte, error) {
	var out, stderr bytes.Buffer
	for _, table := range tables {
		x.execs.Add(1)
		cmd := exec.CommandContext(ctx, "iptables-save", "-t", table)
		cmd.Stdout, cmd.Stderr = &out, &stderr
		if err := cmd.Run(); err != nil {
			return nil, fmt.Errorf("iptables-save -t %s: %w: %s", table, err, strings.TrimSpace(stderr.String()))
		}
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
