package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"

	"github.com/go-logr/logr"
	"github.com/vishvananda/netlink"
	"golang.org/x/sync/errgroup"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	"github.com/magic-ip/magic-ip/agent/kube"
)

// Run programs the node until ctx ends. Rules and addresses stay in place on exit unless
// cfg.CleanupOnExit is set.
func Run(ctx context.Context, cfg Config, log logr.Logger) (err error) {
	if err := cfg.Validate(); err != nil {
		return err
	}
	log = log.WithValues("node", cfg.NodeName)
	changed, problems := EnsureNodeSysctls(Sysctl{Dir: cfg.ProcSysDir})
	for _, c := range changed {
		log.Info("set sysctl so bridged pod traffic passes iptables (needed for same-bridge consumers and producers)", "sysctl", c)
	}
	for _, p := range problems {
		log.Error(p, "node network check failed")
	}
	ipt, links, err := openNode()
	if err != nil {
		return err
	}
	defer links.Close()
	ext, err := externalInterfaces(cfg)
	if err != nil {
		return err
	}
	log.Info("starting", "hostInterface", cfg.HostInterface, "externalInterfaces", ext, "resyncPeriod", cfg.ResyncPeriod)
	if cfg.CleanupOnExit {
		defer func() {
			if cerr := Cleanup(ipt, links); cerr != nil {
				err = errors.Join(err, fmt.Errorf("cleanup on exit: %w", cerr))
			} else {
				log.Info("removed rules and addresses on exit (--cleanup-on-exit)")
			}
		}()
	}
	syncer := &Syncer{Ipt: ipt, Links: links, ExternalInterfaces: ext, Log: log}
	return runController(ctx, cfg, syncer, log)
}

// runController watches the API, serves the probes and metrics, and syncs the node until ctx
// ends or one of them fails.
func runController(ctx context.Context, cfg Config, syncer *Syncer, log logr.Logger) error {
	restCfg, err := clientcmd.BuildConfigFromFlags("", cfg.Kubeconfig)
	if err != nil {
		return fmt.Errorf("kubernetes client config: %w", err)
	}
	restCfg.UserAgent = "magic-ip-agent/" + cfg.NodeName
	clients, err := kube.NewClients(restCfg)
	if err != nil {
		return err
	}
	pods, err := kube.PodInformer(clients.Core, cfg.NodeName)
	if err != nil {
		return err
	}
	mips, err := kube.MagicIPInformer(clients.MagicIP)
	if err != nil {
		return err
	}
	recorder := kube.NewRecorder(clients.Events, cfg.NodeName, log)
	m := NewMetrics()
	c := NewController(ControllerConfig{
		MagicIPs: mips.GetStore(), Pods: pods.GetStore(), Syncer: syncer, NodeName: cfg.NodeName,
		DefaultInterface: cfg.HostInterface, ResyncPeriod: cfg.ResyncPeriod, Recorder: recorder, Metrics: m, Log: log,
	})
	var synced []cache.DoneChecker
	for _, inf := range []cache.SharedIndexInformer{pods, mips} {
		reg, err := inf.AddEventHandler(c.Handler())
		if err != nil {
			return fmt.Errorf("watch: %w", err)
		}
		synced = append(synced, reg.HasSyncedChecker())
	}
	servers, err := startServers(cfg, c, m)
	if err != nil {
		return err
	}
	// client-go (reflectors) logs through the context's logger.
	g, ctx := errgroup.WithContext(klog.NewContext(ctx, log))
	for _, s := range servers {
		g.Go(func() error { return s.serve(ctx, log) })
	}
	for _, inf := range []cache.SharedIndexInformer{pods, mips} {
		g.Go(func() error { inf.RunWithContext(ctx); return nil })
	}
	g.Go(func() error { recorder.Run(ctx); return nil })
	g.Go(func() error { c.Run(ctx, synced...); return nil })
	if err := g.Wait(); err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	return nil
}

// externalInterfaces is cfg.ExternalInterfaces, or else the interfaces holding cfg.NodeIP.
func externalInterfaces(cfg Config) ([]string, error) {
	if len(cfg.ExternalInterfaces) > 0 || cfg.NodeIP == "" {
		return cfg.ExternalInterfaces, nil
	}
	ip := net.ParseIP(cfg.NodeIP)
	if ip == nil {
		return nil, fmt.Errorf("--node-ip %q is not an IP address", cfg.NodeIP)
	}
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("list addresses: %w", err)
	}
	var out []string
	for _, a := range addrs {
		if !a.IP.Equal(ip) {
			continue
		}
		link, err := netlink.LinkByIndex(a.LinkIndex)
		if err != nil {
			return nil, fmt.Errorf("interface of %s: %w", ip, err)
		}
		if name := link.Attrs().Name; !slices.Contains(out, name) {
			out = append(out, name)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no interface holds --node-ip %s: set --external-interfaces", ip)
	}
	return out, nil
}

// CleanupNode removes everything the agent owns on this node (the `cleanup` subcommand).
// Without a usable iptables the addresses are still removed, and both failures reported.
func CleanupNode() error {
	links, err := NewLinks(DefaultDummyInterface)
	if err != nil {
		return err
	}
	defer links.Close()
	ipt, err := NewIptables()
	if err != nil {
		return errors.Join(err, cleanupLinks(links))
	}
	return Cleanup(ipt, links)
}

// openNode opens the node's iptables and netlink handles; the caller closes the Links.
func openNode() (*Iptables, *Links, error) {
	ipt, err := NewIptables()
	if err != nil {
		return nil, nil, err
	}
	links, err := NewLinks(DefaultDummyInterface)
	if err != nil {
		return nil, nil, err
	}
	return ipt, links, nil
}
