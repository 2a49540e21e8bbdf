package agent

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/magic-ip/magic-ip/agent/nodestatus"
	"github.com/magic-ip/magic-ip/internal/flagenv"
)

// Default endpoints: on the node's loopback (the agent shares the host network, so any other
// address would be reachable from off the node), on ports no common node agent uses (9402 is
// cert-manager's metrics; 10249-10259 are kube-proxy's and the control plane's).
const (
	DefaultMetricsAddr = "127.0.0.1:10271"
	DefaultHealthAddr  = "127.0.0.1:10272"
)

// Config is the agent's whole configuration, from flags with environment-variable twins.
type Config struct {
	NodeName           string
	HostInterface      string
	ExternalInterfaces []string
	NodeIP             string
	// DetectLocalMode is a LocalMode; PodBridgeInterface and PodInterfacePrefixes serve its
	// BridgeInterface and InterfaceNamePrefix modes.
	DetectLocalMode      string
	PodBridgeInterface   string
	PodInterfacePrefixes []string
	AllowedAddressRanges []string
	ResyncPeriod         time.Duration
	MaxSyncBackoff       time.Duration
	CleanupOnExit        bool
	// StartupTaint (key[=value]:Effect) is removed from the Node after the first sync that
	// programmed every MagicIP; empty: none.
	StartupTaint string
	ProcSysDir   string
	Kubeconfig   string
	MetricsAddr  string
	HealthAddr   string
	Verbosity    int
	// Datapath is auto, iptables or nftables (see Datapaths).
	Datapath string
	// CountersMinInterval is the least time between two reads of the rule counters at scrape time.
	CountersMinInterval time.Duration
}

// BindFlags registers every flag on fs, each with its environment-variable twin (named in the
// help text), so a DaemonSet can configure the agent either way; the command line wins.
func (c *Config) BindFlags(fs *flagenv.Set) {
	fs.String(&c.NodeName, "node-name", "NODE_NAME", "", "name of this node (required; in a DaemonSet: the downward API's spec.nodeName)")
	fs.String(&c.HostInterface, "host-interface", "MAGIC_IP_HOST_INTERFACE", DefaultDummyInterface,
		"interface that carries the magic addresses; "+DefaultDummyInterface+" is created as a dummy link, any other name must exist (e.g. cni0)")
	fs.String(&c.DetectLocalMode, "detect-local-mode", "MAGIC_IP_DETECT_LOCAL_MODE", string(NodeAddresses),
		"how traffic from this node's pods (redirected) is told from off-node traffic (never redirected): NodeAddresses (arriving on an interface holding one of the Node's addresses is off-node), NodeCIDR (only sources in the Node's spec.podCIDRs are node-local), BridgeInterface (only traffic arriving on --pod-bridge-interface), InterfaceNamePrefix (only traffic arriving on an interface named with one of --pod-interface-name-prefixes)")
	fs.String(&c.NodeIP, "node-ip", "NODE_IP", "", "NodeAddresses mode: the node's IP, instead of the Node object's InternalIP/ExternalIP addresses; the interfaces holding it are external")
	fs.String(&c.PodBridgeInterface, "pod-bridge-interface", "MAGIC_IP_POD_BRIDGE_INTERFACE", "", "BridgeInterface mode: the bridge this node's pods attach to (e.g. cni0)")
	fs.List(&c.PodInterfacePrefixes, "pod-interface-name-prefixes", "MAGIC_IP_POD_INTERFACE_NAME_PREFIXES", []string{"veth", "cali", "lxc"}, checkInterfaceName,
		"InterfaceNamePrefix mode: comma-separated `prefixes` of the node-side interfaces of pods (veth: bridge CNIs, flannel; cali: Calico; lxc: Cilium)")
	fs.String(&c.Kubeconfig, "kubeconfig", "KUBECONFIG", "", "kubeconfig file; empty means in-cluster config")
	fs.String(&c.MetricsAddr, "metrics-bind-address", "MAGIC_IP_METRICS_BIND_ADDRESS", DefaultMetricsAddr,
		"address of the Prometheus /metrics endpoint (the agent is on the host network: the default is reachable on the node only; e.g. <node IP>:10271 or :10271 to scrape from a pod); 0 disables it")
	fs.String(&c.HealthAddr, "health-probe-bind-address", "MAGIC_IP_HEALTH_PROBE_BIND_ADDRESS", DefaultHealthAddr,
		"address of /healthz and /readyz (the kubelet probes 127.0.0.1 from the node); 0 disables them")
	fs.String(&c.ProcSysDir, "proc-sys-dir", "MAGIC_IP_PROC_SYS_DIR", "/proc/sys",
		"where the node's sysctls are read and written; a container's /proc/sys is read-only, so the DaemonSet mounts the host's /proc/sys/net under /host/proc/sys")
	fs.List(&c.ExternalInterfaces, "external-interfaces", "MAGIC_IP_EXTERNAL_INTERFACES", nil, checkInterfaceName,
		"comma-separated uplink `interfaces`: traffic arriving there is from outside the node and is never redirected (NodeAddresses mode; default: the interfaces holding the node's addresses)")
	fs.List(&c.AllowedAddressRanges, "allowed-address-ranges", "MAGIC_IP_ALLOWED_ADDRESS_RANGES", DefaultAllowedRanges(), checkPrefix,
		"comma-separated CIDR `ranges` a MagicIP's address must fall in to be programmed on this node; others are reported, not programmed (cloud metadata addresses never are)")
	fs.Duration(&c.ResyncPeriod, "resync-period", "MAGIC_IP_RESYNC_PERIOD", 10*time.Second, "how often to re-read the node's rules and repair drift; nothing is written when nothing drifted")
	fs.Duration(&c.MaxSyncBackoff, "max-sync-backoff", "MAGIC_IP_MAX_SYNC_BACKOFF", DefaultMaxBackoff,
		"longest wait between retries of a failing sync (the wait doubles from 5ms up to this)")
	fs.String(&c.Datapath, "datapath", "MAGIC_IP_DATAPATH", DatapathAuto,
		"how rules are written: iptables (iptables-restore, chains MAGIC-IP-*), nftables (netlink, one table inet magic-ip for IPv4 and IPv6, no nft binary needed) or auto (nftables when kube-proxy runs in nftables mode or iptables is not usable, else iptables); the log says which was chosen")
	fs.Duration(&c.CountersMinInterval, "counters-min-interval", "MAGIC_IP_COUNTERS_MIN_INTERVAL", DefaultCountersMinInterval,
		"least `interval` between two reads of the kernel's rule counters behind magic_ip_agent_no_producer_connections_total (one iptables -v -S of one chain each, and one ip6tables -v -S while a MagicIP has an IPv6 address; one netlink dump with nftables); scrapes in between get the last figures; 0: read at every scrape")
	fs.Bool(&c.CleanupOnExit, "cleanup-on-exit", "MAGIC_IP_CLEANUP_ON_EXIT", false, "remove rules and addresses on exit; by default they stay so an agent restart never interrupts traffic")
	fs.String(&c.StartupTaint, "startup-taint", "MAGIC_IP_STARTUP_TAINT", "",
		"taint (key[=value]:Effect, e.g. magic-ip.dev/agent-not-ready:NoSchedule) that node provisioning puts on new nodes (kubelet --register-with-taints): the agent removes it from its Node once every MagicIP of the node is programmed, so consumers never start before their magic IPs answer; the cleanup command removes it too (with --node-name). Empty: no taint is removed")
	fs.Int(&c.Verbosity, "v", "MAGIC_IP_VERBOSITY", 0, "log verbosity: 2 one line per sync, 4 per object, 9 the rendered rules")
}

// Validate returns every problem at once.
func (c *Config) Validate() error {
	var errs []error
	if c.NodeName == "" {
		errs = append(errs, errors.New("--node-name (or NODE_NAME) is required"))
	}
	if c.HostInterface == "" {
		errs = append(errs, errors.New("--host-interface must not be empty"))
	}
	if !slices.Contains(LocalModes(), LocalMode(c.DetectLocalMode)) {
		errs = append(errs, fmt.Errorf("--detect-local-mode %q: want one of %v", c.DetectLocalMode, LocalModes()))
	}
	if _, err := c.AddressPolicy(); err != nil {
		errs = append(errs, err)
	}
	if _, err := c.Taint(); err != nil {
		errs = append(errs, fmt.Errorf("--startup-taint: %w", err))
	}
	if c.MaxSyncBackoff < 10*time.Millisecond {
		errs = append(errs, fmt.Errorf("--max-sync-backoff %s is too short: use at least 10ms", c.MaxSyncBackoff))
	}
	if !slices.Contains(Datapaths(), c.Datapath) {
		errs = append(errs, fmt.Errorf("--datapath %q: want one of %v", c.Datapath, Datapaths()))
	}
	if c.CountersMinInterval < 0 {
		errs = append(errs, fmt.Errorf("--counters-min-interval %s must not be negative", c.CountersMinInterval))
	}
	if c.ResyncPeriod < time.Second {
		errs = append(errs, fmt.Errorf("--resync-period %s is too short: use at least 1s", c.ResyncPeriod))
	}
	return errors.Join(errs...)
}

// AddressPolicy is the policy of --allowed-address-ranges.
func (c *Config) AddressPolicy() (AddressPolicy, error) {
	var p AddressPolicy
	for _, s := range c.AllowedAddressRanges {
		r, err := netip.ParsePrefix(s)
		if err != nil {
			return AddressPolicy{}, fmt.Errorf("--allowed-address-ranges: %w", err)
		}
		p.Allowed = append(p.Allowed, r.Masked())
	}
	return p, nil
}

// Taint is the parsed --startup-taint (nil when empty).
func (c *Config) Taint() (*corev1.Taint, error) {
	if c.StartupTaint == "" {
		return nil, nil
	}
	t, err := nodestatus.ParseTaint(c.StartupTaint)
	if err != nil {
		return nil, err
	}
	return &t, nil
}

func checkPrefix(s string) error {
	_, err := netip.ParsePrefix(s)
	return err
}

// checkInterfaceName refuses what the kernel would refuse as an interface name (IFNAMSIZ 16 with
// the NUL; no '/', ':' or whitespace), so a typo fails at start, not in every iptables-restore.
func checkInterfaceName(name string) error {
	if len(name) > 15 {
		return fmt.Errorf("interface name longer than 15 characters")
	}
	if name == "." || name == ".." || strings.ContainsAny(name, "/: \t\n") {
		return fmt.Errorf("not a valid interface name")
	}
	return nil
}
