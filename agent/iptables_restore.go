package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"sync"
)

// Restore applies data with iptables-restore --noflush (one exec, or the process Prestart started):
// only the chains and rules named in data change, atomically per table.
func (x *Iptables) Restore(ctx context.Context, data []byte) error {
	p := x.spare.take()
	if p == nil {
		var err error
		if p, err = x.startRestore(ctx); err != nil {
			return &RestoreError{Cmd: x.cmd + "-restore", Err: err, Input: data}
		}
	}
	return p.finish(data)
}

// Prestart starts the iptables-restore of the next Restore now, for a write known to come once
// something slower is done (a list from the API server): the process's start, most of a small
// restore's cost on a busy node, then overlaps that wait. It only waits for its input: it reads
// the kernel and takes the xtables lock (legacy backend) only once given its input, so what it
// writes is computed from the kernel as it is then. Release ends it when no Restore used it; a
// failed start is left to the Restore, which starts its own and reports.
func (x *Iptables) Prestart(ctx context.Context) {
	x.spare.mu.Lock()
	defer x.spare.mu.Unlock()
	if x.spare.p != nil {
		return
	}
	x.spare.p, _ = x.startRestore(ctx)
}

// Release ends a prestarted iptables-restore that no Restore used: given no input, it writes
// nothing.
func (x *Iptables) Release() {
	if p := x.spare.take(); p != nil {
		_ = p.finish(nil)
	}
}

// spareRestore holds at most one prestarted process.
type spareRestore struct {
	mu sync.Mutex
	p  *restoreProcess
}

func (s *spareRestore) take() *restoreProcess {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.p
	s.p = nil
	return p
}

// restoreProcess is a started iptables-restore --noflush waiting for its input on a pipe.
type restoreProcess struct {
	name   string // iptables-restore or ip6tables-restore
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stderr bytes.Buffer
}

func (x *Iptables) startRestore(ctx context.Context) (*restoreProcess, error) {
	x.execs.Add(1)
	name := x.cmd + "-restore"
	p := &restoreProcess{name: name, cmd: exec.CommandContext(ctx, name, "--noflush", "--wait", "5")}
	p.cmd.Stderr = &p.stderr
	var err error
	if p.stdin, err = p.cmd.StdinPipe(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	return p, nil
}

// finish writes data (nil: nothing) to the process, closes its input and waits for it.
func (p *restoreProcess) finish(data []byte) error {
	_, werr := p.stdin.Write(data)
	cerr := p.stdin.Close()
	err := errors.Join(p.cmd.Wait(), werr, cerr)
	if err != nil {
		return &RestoreError{Cmd: p.name, Err: err, Stderr: strings.TrimSpace(p.stderr.String()), Input: data}
	}
	return nil
}
