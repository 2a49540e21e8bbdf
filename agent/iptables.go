package agent

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"sync/atomic"

	"github.com/coreos/go-iptables/iptables"
)

// Iptables is the kernel side of the rules of one family: iptables-save and iptables-restore
// execs (ip6tables-save and ip6tables-restore for IPv6), counted.
type Iptables struct {
	execs atomic.Int64
	// cmd is "iptables" or "ip6tables": the binaries are cmd+"-save" and cmd+"-restore".
	cmd string
	// spare is a restore process started ahead of the Restore that uses it (Prestart).
	spare spareRestore
	// perTable: iptables-save reads only the tables it is given (legacy), so Save names nat and
	// filter. With nf_tables every iptables-save process dumps the whole ruleset from the kernel
	// whatever -t says (iptables 1.8.9), so one process for all tables costs less than two.
	perTable bool
}

// tables are the tables we own chains in, in the order we write them.
var tables = []string{"nat", "filter"}

// NewIptables checks that iptables is usable (go-iptables detects the binary and its version)
// and which backend iptables-save uses.
func NewIptables() (*Iptables, error) { return newIptables(iptables.ProtocolIPv4, "iptables") }

// NewIp6tables is NewIptables for IPv6: ip6tables, ip6tables-save and ip6tables-restore.
func NewIp6tables() (*Iptables, error) { return newIptables(iptables.ProtocolIPv6, "ip6tables") }

func newIptables(proto iptables.Protocol, cmd string) (*Iptables, error) {
	if _, err := iptables.New(iptables.IPFamily(proto), iptables.Timeout(5)); err != nil {
		return nil, fmt.Errorf("%s not usable (install the iptables package): %w", cmd, err)
	}
	if _, err := exec.LookPath(cmd + "-restore"); err != nil {
		return nil, fmt.Errorf("%s-restore not found (install the iptables package): %w", cmd, err)
	}
	version, err := exec.Command(cmd+"-save", "--version").Output()
	if err != nil {
		return nil, fmt.Errorf("%s-save --version (install the iptables package): %w", cmd, err)
	}
	return &Iptables{cmd: cmd, perTable: !strings.Contains(string(version), "nf_tables")}, nil
}

// Name is the command, "iptables" or "ip6tables".
func (x *Iptables) Name() string { return x.cmd }

// Execs is the number of iptables processes run so far by Save and Restore.
func (x *Iptables) Execs() int64 { return x.execs.Load() }

// Save returns iptables-save output holding the nat and filter tables: one exec per table with
// the legacy backend, where the other tables (mangle, raw: a CNI's, a firewall's) are then never
// read; one exec for all tables with nf_tables, where naming a table saves no kernel work.
func (x *Iptables) Save(ctx context.Context) ([]byte, error) {
	if x.perTable {
		return x.save(ctx, tables...)
	}
	return x.save(ctx, "")
}

// save runs iptables-save once per table ("": all tables).
func (x *Iptables) save(ctx context.Context, tables ...string) ([]byte, error) {
	var out, stderr bytes.Buffer
	for _, table := range tables {
		x.execs.Add(1)
		args := []string{}
		if table != "" {
			args = []string{"-t", table}
		}
		cmd := exec.CommandContext(ctx, x.cmd+"-save", args...)
		cmd.Stdout, cmd.Stderr = &out, &stderr
		if err := cmd.Run(); err != nil {
			return nil, fmt.Errorf("%s-save %s: %w: %s", x.cmd, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
		}
	}
	return out.Bytes(), nil
}

// RestoreError carries what iptables-restore said and the offending input line when it names one.
type RestoreError struct {
	Cmd    string // iptables-restore or ip6tables-restore
	Err    error
	Stderr string
	Input  []byte
}

func (e *RestoreError) Error() string {
	msg := fmt.Sprintf("%s: %v: %s", cmp.Or(e.Cmd, "iptables-restore"), e.Err, e.Stderr)
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

// Cleanup removes everything of ours from nat and filter in one iptables-restore: every rule of a
// built-in chain that jumps to a chain of ours, whatever its comment (duplicates, an older
// version's), then our chains. A chain of ours that a foreign chain still jumps to is emptied but
// kept (the foreign rule is not ours to delete) and reported. Should the restore fail, each table
// is tried again alone, from what it holds by then, so one table's failure does not keep the
// other's rules; every error is returned.
func (x *Iptables) Cleanup(ctx context.Context) error {
	saved, err := x.Save(ctx)
	if err != nil {
		return fmt.Errorf("cleanup: %w", err)
	}
	o := ParseSave(saved)
	errs := o.keptChains()
	if err := x.restoreAny(ctx, o.CleanupInput(tables...)); err != nil {
		for _, table := range tables {
			errs = append(errs, x.cleanupTable(ctx, table))
		}
	}
	return errors.Join(errs...)
}

func (x *Iptables) cleanupTable(ctx context.Context, table string) error {
	saved, err := x.save(ctx, table)
	if err == nil {
		err = x.restoreAny(ctx, ParseSave(saved).CleanupInput(table))
	}
	if err != nil {
		return fmt.Errorf("cleanup of table %s: %w", table, err)
	}
	return nil
}

// restoreAny restores input unless it is empty.
func (x *Iptables) restoreAny(ctx context.Context, input []byte) error {
	if len(input) == 0 {
		return nil
	}
	return x.Restore(ctx, input)
}
