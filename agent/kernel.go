package agent

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Sysctl reads and writes sysctls of the agent's network namespace under Dir (empty: /proc/sys).
// In a container /proc/sys is read-only, so the DaemonSet mounts the host's /proc/sys/net
// elsewhere and points Dir there: net.* entries always resolve to the opener's namespace.
type Sysctl struct{ Dir string }

func (s Sysctl) path(key string) string {
	dir := s.Dir
	if dir == "" {
		dir = "/proc/sys"
	}
	return filepath.Join(dir, strings.ReplaceAll(key, ".", "/"))
}

// Get reads a sysctl.
func (s Sysctl) Get(key string) (string, error) {
	b, err := os.ReadFile(s.path(key))
	return strings.TrimSpace(string(b)), err
}

// Set writes a sysctl.
func (s Sysctl) Set(key, value string) error {
	return os.WriteFile(s.path(key), []byte(value), 0o644)
}

const (
	sysctlBridgeNF  = "net.bridge.bridge-nf-call-iptables"
	sysctlBridgeNF6 = "net.bridge.bridge-nf-call-ip6tables"
	sysctlIPForward = "net.ipv4.ip_forward"
)

// EnsureNodeSysctls makes bridged pod traffic pass iptables and ip6tables (without it a consumer
// and a producer on the same bridge hang: the producer's reply is bridged straight back and never
// un-NATed; br_netfilter asks one sysctl per family) and checks that the node forwards IPv4. It
// returns what it changed and what is wrong.
func EnsureNodeSysctls(s Sysctl) (changed []string, problems []error) {
	for _, key := range []string{sysctlBridgeNF, sysctlBridgeNF6} {
		c, err := ensureBridgeNF(s, key)
		if c != "" {
			changed = append(changed, c)
		}
		if err != nil {
			problems = append(problems, err)
		}
		if errors.Is(err, os.ErrNotExist) {
			break // br_netfilter is not loaded: one problem says it
		}
	}
	if v, err := s.Get(sysctlIPForward); err != nil || v != "1" {
		problems = append(problems, fmt.Errorf("%s is %q (err %v): pods cannot be redirected to producers until it is 1", sysctlIPForward, v, err))
	}
	return changed, problems
}

// ensureBridgeNF sets the br_netfilter sysctl key to 1 unless it is: changed is "key=1" when it
// wrote it.
func ensureBridgeNF(s Sysctl, key string) (changed string, problem error) {
	switch v, err := s.Get(key); {
	case errors.Is(err, os.ErrNotExist):
		return "", fmt.Errorf("%s is missing: br_netfilter is not loaded, so a consumer and a producer on the same bridge cannot talk through a magic IP (modprobe br_netfilter): %w", key, err)
	case err != nil:
		return "", fmt.Errorf("read %s: %w", key, err)
	case v != "1":
		if err := s.Set(key, "1"); err != nil {
			return "", fmt.Errorf("set %s=1: %w", key, err)
		}
		return key + "=1", nil
	}
	return "", nil
}

// FlushConntrack deletes the conntrack entries of flows sent to addr:port over UDP (port 0: any
// port), so that clients reusing a socket are redirected afresh (to the new producer, or refused)
// instead of following a stale entry forever.
func FlushConntrack(h *netlink.Handle, addr netip.Addr, port int32) (uint, error) {
	return flushConntrackTo(h, []netip.AddrPort{netip.AddrPortFrom(addr, uint16(port))})
}

// flushConntrackTo deletes the UDP conntrack entries sent to any of targets (port 0: any port)
// with one dump of the conntrack table per address family. A dump walks the kernel's whole
// conntrack hash table, which every namespace shares: some milliseconds on a busy node, so one
// dump per port made a first sync of 1,000 MagicIPs cost seconds.
func flushConntrackTo(h *netlink.Handle, targets []netip.AddrPort) (uint, error) {
	byFamily := map[netlink.InetFamily][]netlink.CustomConntrackFilter{}
	var errs []error
	for _, t := range targets {
		f := &netlink.ConntrackFilter{}
		family := netlink.InetFamily(unix.AF_INET)
		if t.Addr().Is6() {
			family = unix.AF_INET6
		}
		ferrs := []error{f.AddProtocol(unix.IPPROTO_UDP), f.AddIP(netlink.ConntrackOrigDstIP, t.Addr().AsSlice())}
		if t.Port() != 0 {
			ferrs = append(ferrs, f.AddPort(netlink.ConntrackOrigDstPort, t.Port()))
		}
		if err := errors.Join(ferrs...); err != nil {
			errs = append(errs, fmt.Errorf("conntrack filter for %s/UDP: %w", t, err))
			continue
		}
		byFamily[family] = append(byFamily[family], f)
	}
	var total uint
	for _, family := range []netlink.InetFamily{unix.AF_INET, unix.AF_INET6} {
		if len(byFamily[family]) == 0 {
			continue
		}
		// An interrupted dump still deleted what it saw: count it and read the table again.
		_, err := redump(func() (uint, error) {
			n, err := h.ConntrackDeleteFilters(netlink.ConntrackTable, family, byFamily[family]...)
			total += n
			return n, err
		})
		if err != nil {
			errs = append(errs, fmt.Errorf("delete conntrack entries for %d UDP destinations (%v, …): %w", len(byFamily[family]), targets[0], err))
		}
	}
	return total, errors.Join(errs...)
}
