package agent

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/go-logr/logr"

	"github.com/magic-ip/magic-ip/test/harness"
)

// program syncs everyShape() into ns, then adds what else is found on real nodes: foreign rules
// and chains, and our jumps as an older version or a double start leaves them (duplicates, other
// comments, a jump straight to a chain of ours that is not an entry point), with extra.
func program(t *testing.T, ns *harness.Netns, extra string) {
	t.Helper()
	inNetns(t, ns, func(ipt *Iptables, links *Links) error {
		s := &Syncer{Datapath: &IptablesDatapath{Ipt: ipt, Local: ExternalInterfaces("eth0"), Log: logr.Discard()}, Links: links, Log: logr.Discard()}
		if _, err := s.Sync(context.Background(), everyShape(), true); err != nil {
			return err
		}
		return ipt.Restore(context.Background(), []byte(`*nat
:KUBE-SERVICES - [0:0]
-A KUBE-SERVICES -d 10.96.0.1/32 -p tcp -m comment --comment "default/kubernetes:https cluster IP" -m tcp --dport 443 -j RETURN
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A PREROUTING -j MAGIC-IP-PREROUTING
-A PREROUTING -m comment --comment "magic-ip: node-local redirects" -j MAGIC-IP-PREROUTING
-I OUTPUT 1 -m comment --comment "magic-ip v0: redirects" -j MAGIC-IP-OUTPUT
-A OUTPUT -d 169.254.210.210/32 -j MAGIC-IP-SERVICES
COMMIT
*filter
:KUBE-FIREWALL - [0:0]
-A KUBE-FIREWALL -m conntrack --ctstate INVALID -j DROP
-A INPUT -s 192.0.2.1/32 -j ACCEPT
-A INPUT -j KUBE-FIREWALL
-A INPUT -m comment --comment "magic-ip v0" -j MAGIC-IP-INPUT
COMMIT
`+extra))
	})
}

// foreignLines are the foreign rules program adds; cleanup must leave every one of them.
var foreignLines = []string{
	`-A KUBE-SERVICES -d 10.96.0.1/32 -p tcp -m comment --comment "default/kubernetes:https cluster IP" -m tcp --dport 443 -j RETURN`,
	`-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES`,
	`-A KUBE-FIREWALL -m conntrack --ctstate INVALID -j DROP`,
	`-A INPUT -s 192.0.2.1/32 -j ACCEPT`,
	`-A INPUT -j KUBE-FIREWALL`,
}

// plantConntrack adds UDP conntrack entries to our two addresses (a declared port and another)
// and, to keep, one to another address and one TCP entry to ours.
func plantConntrack(t *testing.T, ns *harness.Netns) {
	t.Helper()
	for _, e := range [][]string{
		{"-p", "udp", "-d", "169.254.210.210", "--dport", "8125"},
		{"-p", "udp", "-d", "169.254.20.10", "--dport", "9999"},
		{"-p", "udp", "-d", "192.0.2.50", "--dport", "8125"},
		{"-p", "tcp", "-d", "169.254.210.210", "--dport", "8126", "--state", "ESTABLISHED"},
	} {
		args := append(append([]string{"-I", "-s", "10.244.1.99"}, e...), "--sport", "40000", "-t", "120")
		if _, err := ns.Run(t.Context(), "conntrack", args...); err != nil {
			t.Fatal(err)
		}
	}
}

// checkCleaned checks what a cleanup leaves in ns: no rule or chain of ours (but those named in
// kept, emptied), every foreign rule, no magic address, no UDP conntrack entry to one (TCP ones
// stay: established connections keep their producer).
func checkCleaned(t *testing.T, ns *harness.Netns, kept ...string) {
	t.Helper()
	saved, err := ns.Run(t.Context(), "iptables-save")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(saved, "\n") {
		f := strings.Fields(l)
		switch {
		case strings.HasPrefix(l, ":"+ChainPrefix) && !slices.Contains(kept, strings.TrimPrefix(f[0], ":")),
			strings.HasPrefix(l, "-A "+ChainPrefix),
			strings.HasPrefix(l, "-A ") && slices.Contains(builtinChains, f[1]) && strings.Contains(l, ChainPrefix):
			t.Errorf("left behind: %s", l)
		}
	}
	for _, l := range foreignLines {
		if !strings.Contains(saved, l+"\n") {
			t.Errorf("foreign rule removed: %s", l)
		}
	}
	checkUnaddressed(t, ns)
}

// checkUnaddressed checks that no magic address is left in ns, nor a UDP conntrack entry to one
// (TCP ones stay: established connections keep their producer).
func checkUnaddressed(t *testing.T, ns *harness.Netns) {
	t.Helper()
	if addrs, err := ns.Run(t.Context(), "ip", "-o", "addr", "show", "dev", bridgeIface); err != nil || strings.Contains(addrs, "169.254.") {
		t.Errorf("magic addresses left on %s (err %v):\n%s", bridgeIface, err, addrs)
	}
	ct, err := ns.Run(t.Context(), "conntrack", "-L")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []struct {
		entry string
		kept  bool
	}{{"dst=169.254.210.210 sport=40000 dport=8125", false}, {"dst=169.254.20.10 sport=40000 dport=9999", false},
		{"dst=192.0.2.50 sport=40000 dport=8125", true}, {"dst=169.254.210.210 sport=40000 dport=8126", true}} {
		if strings.Contains(ct, want.entry) != want.kept {
			t.Errorf("conntrack entry %q: present %v, want %v\n%s", want.entry, !want.kept, want.kept, ct)
		}
	}
}

var builtinChains = []string{"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"}

// TestCleanupRemovesEveryJump: duplicate jumps, jumps with an older comment and a jump from a
// built-in chain straight to a chain of ours all go, then every chain of ours; foreign rules stay;
// the addresses and their UDP conntrack entries go. A second cleanup finds nothing to do. With
// both iptables backends (a rule is deleted as iptables-save printed it).
func TestCleanupRemovesEveryJump(t *testing.T) {
	for _, mode := range []string{"nft", "legacy"} {
		t.Run(mode, func(t *testing.T) {
			usePath(t, iptablesMode(t, mode))
			ns := newNetns(t, "cleanjumps-"+mode)
			program(t, ns, "")
			plantConntrack(t, ns)
			inNetns(t, ns, func(ipt *Iptables, links *Links) error {
				saved, err := ipt.Save(context.Background())
				if n := len(ParseSave(saved).Entries); err != nil || n != 9 {
					t.Errorf("jumps to our chains before cleanup: %d (err %v), want 9 (PREROUTING 3, OUTPUT 3, POSTROUTING 1, INPUT 2)", n, err)
				}
				for i := range 2 {
					if err := Cleanup(links, &IptablesDatapath{Ipt: ipt}); err != nil {
						t.Errorf("cleanup %d: %v", i+1, err)
					}
				}
				return nil
			})
			checkCleaned(t, ns)
		})
	}
}

// TestCleanupKeepsGoing: when part of the cleanup fails, the rest is still done and every failure
// is reported — a chain of ours that a foreign chain jumps to is emptied and kept (the foreign rule
// is not ours), and with no iptables at all the addresses and conntrack entries still go, from
// Cleanup and from the cleanup subcommand (CleanupNode).
func TestCleanupKeepsGoing(t *testing.T) {
	t.Run("a foreign chain jumps to ours", func(t *testing.T) {
		ns := newNetns(t, "cleanforeign")
		program(t, ns, "*nat\n:CALICO-X - [0:0]\n-A CALICO-X -j MAGIC-IP-SERVICES\nCOMMIT\n")
		plantConntrack(t, ns)
		inNetns(t, ns, func(ipt *Iptables, links *Links) error {
			err := Cleanup(links, &IptablesDatapath{Ipt: ipt})
			if err == nil || !strings.Contains(err.Error(), `nat/MAGIC-IP-SERVICES emptied but not deleted: the foreign rule "-A CALICO-X -j MAGIC-IP-SERVICES" jumps to it`) {
				t.Errorf("cleanup: %v; want the kept chain reported", err)
			}
			return nil
		})
		checkCleaned(t, ns, "MAGIC-IP-SERVICES")
		if saved, _ := ns.Run(t.Context(), "iptables-save", "-t", "nat"); !strings.Contains(saved, "-A CALICO-X -j MAGIC-IP-SERVICES\n") {
			t.Errorf("the foreign rule jumping to our chain was removed:\n%s", saved)
		}
	})
	t.Run("a restore that fails once", func(t *testing.T) {
		ns := newNetns(t, "cleanretry")
		program(t, ns, "")
		plantConntrack(t, ns)
		dir := failingOnce(t, "iptables-restore")
		usePath(t, dir)
		inNetns(t, ns, func(ipt *Iptables, links *Links) error {
			if err := Cleanup(links, &IptablesDatapath{Ipt: ipt}); err != nil {
				t.Errorf("cleanup: %v; want the retry, table by table, to succeed", err)
			}
			return nil
		})
		if _, err := os.Stat(filepath.Join(dir, "failed-once")); err != nil {
			t.Errorf("the first iptables-restore did not run (and fail): %v", err)
		}
		checkCleaned(t, ns)
	})
	for _, subcommand := range []bool{false, true} {
		name := map[bool]string{false: "no iptables: Cleanup", true: "no iptables: the cleanup subcommand"}[subcommand]
		t.Run(name, func(t *testing.T) {
			ns := newNetns(t, map[bool]string{false: "cleannoipt", true: "cleannoiptcmd"}[subcommand])
			program(t, ns, "")
			plantConntrack(t, ns)
			path := os.Getenv("PATH")
			inNetns(t, ns, func(ipt *Iptables, links *Links) error {
				t.Setenv("PATH", filepath.Join(t.TempDir(), "empty"))
				var err error
				if subcommand {
					err = CleanupNode(Config{})
				} else {
					err = Cleanup(links, &IptablesDatapath{Ipt: ipt})
				}
				if err == nil || !strings.Contains(err.Error(), "iptables") {
					t.Errorf("cleanup without iptables: %v; want an iptables error", err)
				}
				return os.Setenv("PATH", path)
			})
			saved, err := ns.Run(t.Context(), "iptables-save")
			if err != nil || !strings.Contains(saved, ":MAGIC-IP-INPUT") {
				t.Fatalf("without iptables, our chains should still be there (err %v):\n%s", err, saved)
			}
			if addrs, err := ns.Run(t.Context(), "ip", "-o", "addr", "show", "dev", bridgeIface); err != nil || strings.Contains(addrs, "169.254.") {
				t.Errorf("magic addresses left on %s although only iptables failed (err %v):\n%s", bridgeIface, err, addrs)
			}
			if ct, err := ns.Run(t.Context(), "conntrack", "-L", "-p", "udp"); err != nil || strings.Contains(ct, "dst=169.254.") {
				t.Errorf("UDP conntrack entries to magic addresses left although only iptables failed (err %v):\n%s", err, ct)
			}
		})
	}
}

// failingOnce returns a directory with a bin that fails its first run (leaving the file
// "failed-once" there) and runs the real one after.
func failingOnce(t *testing.T, bin string) string {
	real, err := exec.LookPath(bin)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	marker := filepath.Join(dir, "failed-once")
	script := fmt.Sprintf("#!/bin/sh\nif [ ! -e %s ]; then touch %s; echo 'iptables-restore: line 2 failed' >&2; exit 1; fi\nexec %s \"$@\"\n", marker, marker, real)
	if err := os.WriteFile(filepath.Join(dir, bin), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}
