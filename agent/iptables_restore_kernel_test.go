package agent

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"k8s.io/apimachinery/pkg/util/wait"
)

// TestIptablesPrestartedRestore: Prestart starts the next Restore's iptables-restore ahead of its
// input; the Restore then writes through that process (no second one), which reads the kernel
// only once given its input: a chain created between the two is still there, and the write is
// whole. Release, and an Apply with nothing to write, end an unused one without writing.
func TestIptablesPrestartedRestore(t *testing.T) {
	ns := newNetns(t, "prestart")
	const input = "*nat\n:MAGIC-IP-PRESTART - [0:0]\n-A MAGIC-IP-PRESTART -j RETURN\nCOMMIT\n"
	inNetns(t, ns, func(ipt *Iptables, _ *Links) error {
		ctx := context.Background()
		execs := ipt.Execs()
		p, err := prestarted(ctx, ipt)
		if err != nil {
			return err
		}
		if _, err := run("iptables", "-w", "5", "-t", "nat", "-N", "OTHER-AFTER-PRESTART"); err != nil {
			return err
		}
		if err := ipt.Restore(ctx, []byte(input)); err != nil {
			return err
		}
		if n := ipt.Execs() - execs; n != 1 || p.cmd.ProcessState == nil || !p.cmd.ProcessState.Success() {
			t.Errorf("Restore after Prestart: %d processes, the prestarted one ended: %v; want it to have written, alone", n, p.cmd.ProcessState)
		}
		nat, err := run("iptables", "-w", "5", "-t", "nat", "-S")
		if err != nil {
			return err
		}
		for _, want := range []string{"-N OTHER-AFTER-PRESTART", "-A MAGIC-IP-PRESTART -j RETURN"} {
			if !strings.Contains(nat, want) {
				t.Errorf("nat after the prestarted restore lacks %q:\n%s", want, nat)
			}
		}

		// Unused: Release ends it, and it writes nothing.
		if p, err = prestarted(ctx, ipt); err != nil {
			return err
		}
		ipt.Release()
		if err := endedUnchanged(ipt, p, nat, "Release"); err != nil {
			return err
		}
		// An Apply with nothing to write ends it too.
		d := &IptablesDatapath{Ipt: ipt, Local: ExternalInterfaces("eth0"), Log: testr.New(t)}
		if _, _, err := d.Apply(ctx, State{}, true); err != nil {
			return err
		}
		if nat, err = run("iptables", "-w", "5", "-t", "nat", "-S"); err != nil {
			return err
		}
		d.Prepare(ctx)
		p = ipt.spare.p
		if wrote, _, err := d.Apply(ctx, State{}, false); err != nil || wrote {
			t.Errorf("Apply of an unchanged State after Prepare: wrote %v, err %v; want nothing written", wrote, err)
		}
		return endedUnchanged(ipt, p, nat, "Apply with nothing to write")
	})
}

// prestarted calls Prestart and returns the process it started.
func prestarted(ctx context.Context, ipt *Iptables) (*restoreProcess, error) {
	ipt.Prestart(ctx)
	p := ipt.spare.p
	if p == nil {
		return nil, fmt.Errorf("Prestart started no iptables-restore")
	}
	// Until it waits on its input it may not have read the kernel yet: wait for that, so that
	// what changes from here on is a change after its start.
	wchan := fmt.Sprintf("/proc/%d/wchan", p.cmd.Process.Pid)
	err := wait.PollUntilContextTimeout(ctx, time.Millisecond, 5*time.Second, true, func(context.Context) (bool, error) {
		b, err := os.ReadFile(wchan)
		return err == nil && strings.Contains(string(b), "pipe_read"), nil
	})
	if err != nil {
		return nil, fmt.Errorf("the prestarted iptables-restore never waited on its input (%s): %w", wchan, err)
	}
	return p, nil
}

// endedUnchanged checks that the prestarted p has ended successfully, is no longer kept, and left
// the nat table as it was (before).
func endedUnchanged(ipt *Iptables, p *restoreProcess, before, after string) error {
	if p == nil || p.cmd.ProcessState == nil || !p.cmd.ProcessState.Success() || ipt.spare.p != nil {
		return fmt.Errorf("%s: the prestarted iptables-restore is not ended cleanly (process %v, still kept: %v)", after, p, ipt.spare.p != nil)
	}
	nat, err := run("iptables", "-w", "5", "-t", "nat", "-S")
	if err != nil {
		return err
	}
	if nat != before {
		return fmt.Errorf("%s: nat changed:\n%s\nwant:\n%s", after, nat, before)
	}
	return nil
}
