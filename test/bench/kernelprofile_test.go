package bench

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The kernel's share of a new connection, measured with perf: the data path's connect rate moves
// by about a point between runs on this VM (two identical paths differ by that much), so it cannot
// tell what our rules cost beyond any DNAT. A CPU profile can: perf samples every CPU of the
// machine (4,000 samples per second each, a software clock: the VM offers no hardware counters)
// while one target's connects run alone, and each sample is charged to the kernel part of the
// function it landed in. Divided by the connects made in the window, that is the CPU time per
// connect spent in netfilter (nftables, iptables, conntrack, NAT — every table's, ours and
// kube-proxy's), in routing and in the bridge, whichever CPU did it (the client's system calls,
// the softirqs, the producer's answer).

// profileHz is perf's sampling frequency per CPU.
const profileHz = 4000

// kernelPart names the part of the machine a sampled function belongs to: "idle" (a CPU with
// nothing to do, not counted), "netfilter" (a packet's way through it), "routing", "bridge", or
// "" (anything else: the rest of the kernel and user space, including netfilter's control plane
// — rules and conntrack entries read or written over netlink by the agents and kube-proxy, which
// run beside the connects).
func kernelPart(sym string) string {
	name := strings.TrimLeft(sym, "_") // __nf_conntrack_find_get is conntrack's as nf_conntrack_in is
	switch {
	case strings.Contains(sym, "idle") || strings.HasSuffix(sym, "safe_halt"):
		return "idle"
	case hasAnyPrefix(name, "br_", "nbp_"): // br_nf_*: the bridge's hand-over to netfilter
		return "bridge"
	case hasAnyPrefix(name, "nft_", "nf_", "ipt_", "ip6t_", "xt_", "ipv4_conntrack", "ipv6_conntrack", "ctnetlink", "nfnetlink"):
		if controlPlane(name) {
			return ""
		}
		return "netfilter"
	case hasAnyPrefix(name, "ip_route_", "ip6_route_", "ip6_pol_route", "fib", "rt6_", "ip_rt_", "ipv4_dst_", "dst_"):
		return "routing"
	}
	return ""
}

// controlPlane tells netfilter's functions that read or write rules, sets and conntrack entries
// over netlink (the agents' syncs and drift checks, kube-proxy's, the conntrack flushes) from
// those a packet runs through.
func controlPlane(sym string) bool {
	if hasAnyPrefix(sym, "nf_tables_", "nfnetlink", "ctnetlink", "nft_trans", "nft_chain_", "nft_rule_", "nft_table_", "nft_expr_", "nft_data_", "nft_setelem", "nft_set_elem", "nft_obj_", "nft_flowtable", "nft_mapelem") || strings.Contains(sym, "dump") {
		return true
	}
	if !strings.HasPrefix(sym, "nft_") {
		return false
	}
	for _, s := range []string{"_init", "destroy", "validate", "commit", "abort", "clone", "activate", "flush", "_fill", "_insert", "_remove", "_walk", "_alloc", "_free"} {
		if strings.Contains(sym, s) {
			return true
		}
	}
	return false
}

func hasAnyPrefix(s string, prefixes ...string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

// perfSamples parses `perf report --sort sym -n --stdio` output into samples per symbol.
func perfSamples(r io.Reader) (map[string]int, error) {
	out := map[string]int{}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		// "    38.30%          3064  [k] pv_native_safe_halt"
		f := strings.Fields(sc.Text())
		if len(f) < 4 || strings.HasPrefix(f[0], "#") || !strings.HasSuffix(f[0], "%") || !strings.HasPrefix(f[2], "[") {
			continue
		}
		n, err := strconv.Atoi(f[1])
		if err != nil {
			return nil, fmt.Errorf("perf report line %q: %w", sc.Text(), err)
		}
		out[strings.Join(f[3:], " ")] += n
	}
	return out, sc.Err()
}

// perfWindow is one `perf record -a`, started disabled and driven over its control FIFOs, so
// that its samples cover exactly the window between enable and disable.
type perfWindow struct {
	cmd      *exec.Cmd
	ctl, ack *os.File
	data     string
}

func startPerf(dir string) (*perfWindow, error) {
	if _, err := exec.LookPath("perf"); err != nil {
		return nil, fmt.Errorf("perf is not installed (Debian: linux-perf; hack/prereqs.sh installs it): %w", err)
	}
	p := &perfWindow{data: filepath.Join(dir, "perf.data")}
	ctl, ack := filepath.Join(dir, "ctl"), filepath.Join(dir, "ack")
	for _, f := range []string{ctl, ack} {
		_ = os.Remove(f)
		if err := syscall.Mkfifo(f, 0o600); err != nil {
			return nil, fmt.Errorf("perf control fifo: %w", err)
		}
	}
	var err error
	// Read-write opens: neither end waits for perf to open its own.
	if p.ctl, err = os.OpenFile(ctl, os.O_RDWR, 0); err != nil {
		return nil, err
	}
	if p.ack, err = os.OpenFile(ack, os.O_RDWR, 0); err != nil {
		p.ctl.Close()
		return nil, err
	}
	p.cmd = exec.Command("perf", "record", "-q", "-a", "-F", strconv.Itoa(profileHz), "-D", "-1",
		"--control", "fifo:"+ctl+","+ack, "-o", p.data)
	var stderr strings.Builder
	p.cmd.Stderr = &stderr
	if err := p.cmd.Start(); err != nil {
		p.close()
		return nil, fmt.Errorf("perf record: %w", err)
	}
	return p, nil
}

// command sends perf "enable" or "disable" and waits for its acknowledgement.
func (p *perfWindow) command(c string) error {
	if _, err := p.ctl.WriteString(c + "\n"); err != nil {
		return fmt.Errorf("perf %s: %w", c, err)
	}
	if err := p.ack.SetReadDeadline(time.Now().Add(30 * time.Second)); err != nil {
		return err
	}
	buf := make([]byte, 16)
	n, err := p.ack.Read(buf)
	if err != nil || !strings.HasPrefix(string(buf[:n]), "ack") {
		return fmt.Errorf("perf %s: no acknowledgement (%q): %v", c, buf[:n], err)
	}
	return nil
}

// stop ends the recording and returns its samples per symbol.
func (p *perfWindow) stop() (map[string]int, error) {
	defer p.close()
	_ = p.cmd.Process.Signal(os.Interrupt)
	_ = p.cmd.Wait() // interrupted: its exit status says nothing; the report below does
	out, err := exec.Command("perf", "report", "-i", p.data, "--no-children", "--sort", "sym", "-n", "--stdio").Output()
	if err != nil {
		return nil, fmt.Errorf("perf report: %w (perf record said: %s)", err, strings.TrimSpace(fmt.Sprint(p.cmd.Stderr)))
	}
	return perfSamples(strings.NewReader(string(out)))
}

func (p *perfWindow) close() {
	if p.ctl != nil {
		p.ctl.Close()
	}
	if p.ack != nil {
		p.ack.Close()
	}
}

// connectCost is one target's profile: connects made and samples per kernel part.
type connectCost struct {
	ops     int
	samples map[string]int
}

// usPerOp is the CPU time per connect of part ("all": every non-idle sample).
func (c connectCost) usPerOp(part string) float64 {
	if c.ops == 0 {
		return 0
	}
	return float64(c.samples[part]) / float64(c.ops) * 1e6 / profileHz
}

// kernelProfile runs each target's connects alone for window, rounds times (the targets in a
// new random order each round), under perf, and returns per target what the machine's CPU did
// per connect.
func kernelProfile(b *testing.B, targets []pathTarget, rounds int, window time.Duration) ([]connectCost, error) {
	out := make([]connectCost, len(targets))
	for i := range out {
		out[i].samples = map[string]int{}
	}
	err := onClientThread(b, targets, true, func(c *pathClient) error {
		dir := b.TempDir()
		rnd := rand.New(rand.NewPCG(3, 4))
		for range rounds {
			for _, j := range rnd.Perm(len(targets)) {
				p, err := startPerf(dir)
				if err != nil {
					return err
				}
				if err := p.command("enable"); err != nil {
					_, _ = p.stop()
					return err
				}
				ops := 0
				for end := time.Now().Add(window); time.Now().Before(end); ops++ {
					if res := c.do(j); res.err != nil {
						_, _ = p.stop()
						return fmt.Errorf("%s (%s): %w", targets[j].name, targets[j].addr, res.err)
					}
				}
				err = p.command("disable")
				syms, serr := p.stop()
				if err = errors.Join(err, serr); err != nil {
					return err
				}
				out[j].ops += ops
				for sym, n := range syms {
					part := kernelPart(sym)
					if part == "idle" {
						continue
					}
					out[j].samples["all"] += n
					if part != "" {
						out[j].samples[part] += n
					}
				}
			}
		}
		return nil
	})
	return out, err
}

// kernelProfileRows records one node's profile (what: how many MagicIPs it served): per target
// the CPU per connect in netfilter, what each DNAT path's netfilter costs beyond the bare DNAT's,
// as a share of the whole connect, and, for a target in ref (the same node's profile with fewer
// MagicIPs), how its netfilter cost moved.
func kernelProfileRows(dp, what string, targets []pathTarget, costs []connectCost, rounds int, window time.Duration, ref map[string]connectCost) {
	sc := fmt.Sprintf("backends: where a new connection's CPU goes, %s datapath node with %s, beside kube-proxy (perf on every CPU, %d windows of %s per target, each target alone in its window; µs of CPU per connect)", dp, what, rounds, window)
	bare := slices.IndexFunc(targets, func(t pathTarget) bool { return strings.HasPrefix(t.name, bareName) })
	for j, t := range targets {
		c := costs[j]
		record(row{Scenario: sc, Figure: fmt.Sprintf("%s: netfilter — every table, conntrack and NAT (routing %s, bridge %s, everything the machine did %s µs per connect; %d connects)",
			t.name, trim(c.usPerOp("routing")), trim(c.usPerOp("bridge")), trim(c.usPerOp("all")), c.ops), Value: c.usPerOp("netfilter"), Unit: "µs"})
		if r, ok := ref[t.name]; ok {
			record(row{Scenario: sc, Figure: fmt.Sprintf("%s: netfilter per connect ÷ with 1 MagicIP (%s µs then)", t.name, trim(r.usPerOp("netfilter"))),
				Value: c.usPerOp("netfilter") / r.usPerOp("netfilter"), Unit: "×"})
		}
		if bare < 0 || j == bare || strings.HasPrefix(t.name, "direct") {
			continue
		}
		extra := c.usPerOp("netfilter") - costs[bare].usPerOp("netfilter")
		record(row{Scenario: sc, Figure: fmt.Sprintf("%s: netfilter beyond the bare DNAT's (%s µs per connect), %% of everything a connect costs",
			t.name, trim(extra)), Value: 100 * extra / c.usPerOp("all"), Unit: "%"})
	}
}
