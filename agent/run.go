package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/go-logr/logr"
	"golang.org/x/sync/errgroup"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	"github.com/magic-ip/magic-ip/agent/kube"
	"github.com/magic-ip/magic-ip/agent/nodereport"
	"github.com/magic-ip/magic-ip/agent/nodestatus"
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
	clients, err := newClients(cfg)
	if err != nil {
		return err
	}
	local, node, err := detectLocal(ctx, cfg, clients, log)
	if err != nil {
		return err
	}
	dp, retire, choice, err := openDatapath(ctx, cfg.Datapath, local, NewNoProducerCounters(cfg.CountersMinInterval, log), log)
	if err != nil {
		return err
	}
	links, err := NewLinks(DefaultDummyInterface)
	if err != nil {
		return err
	}
	defer links.Close()
	log.Info("starting", "hostInterface", cfg.HostInterface, "localTraffic", local.String(), "resyncPeriod", cfg.ResyncPeriod, "datapath", dp.Name())
	if cfg.CleanupOnExit {
		defer func() {
			if cerr := errors.Join(Cleanup(links, dp), forgetNode(cfg, clients)); cerr != nil {
				err = errors.Join(err, fmt.Errorf("cleanup on exit: %w", cerr))
			} else {
				log.Info("removed rules and addresses, and the Node condition, on exit (--cleanup-on-exit)")
			}
		}()
	}
	syncer := &Syncer{Datapath: dp, Retire: retire, Links: links, Log: log, Unsupported: unsupported(cfg, node, dp, log)}
	// The last background conntrack flush finishes before the cleanup and the handle's close.
	defer syncer.WaitFlushes()
	return runController(ctx, cfg, clients, syncer, choice, log)
}

// newClients builds the API clients from --kubeconfig or the in-cluster config.
func newClients(cfg Config) (*kube.Clients, error) {
	restCfg, err := clientcmd.BuildConfigFromFlags("", cfg.Kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client config: %w", err)
	}
	restCfg.UserAgent = "magic-ip-agent/" + cfg.NodeName
	return kube.NewClients(restCfg)
}

// detectLocal resolves --detect-local-mode from this node's interfaces and, unless the flags say
// all it needs, its Node object (returned: only its name when not read).
func detectLocal(ctx context.Context, cfg Config, clients *kube.Clients, log logr.Logger) (*LocalDetector, *corev1.Node, error) {
	node := &corev1.Node{}
	node.Name = cfg.NodeName
	if needsNode(cfg) {
		var err error
		if node, err = getNode(ctx, clients.Core, cfg.NodeName); err != nil {
			return nil, nil, err
		}
	}
	links, err := hostLinks()
	if err != nil {
		return nil, nil, err
	}
	local, notes, err := resolveLocal(cfg, node, links)
	if err != nil {
		return nil, nil, fmt.Errorf("off-node traffic: %w", err)
	}
	for _, n := range notes {
		log.Info("warning: "+n, "detectLocalMode", cfg.DetectLocalMode)
	}
	return local, node, nil
}

// unsupported are the address families this node does not program, with why (logged): IPv6
// without IPv6 in the kernel or the datapath, IPv4 on an IPv6-only node (--node-ip, or the Node's
// addresses when it was read). Decided once, at start: the node's report holds still.
func unsupported(cfg Config, node *corev1.Node, dp Datapath, log logr.Logger) map[Family]string {
	out := map[Family]string{}
	if why := IPv6Unavailable(Sysctl{Dir: cfg.ProcSysDir}, dp); why != "" {
		out[IPv6] = why
	}
	if addrs, from, err := nodeAddresses(cfg, node); err == nil {
		if why := IPv4Unavailable(addrs, from); why != "" {
			out[IPv4] = why
		}
	}
	for _, fam := range []Family{IPv4, IPv6} {
		if why := out[fam]; why != "" {
			log.Info("magic addresses of this family are not programmed on this node; the MagicIPNode record reports them", "family", fam, "why", why)
		}
	}
	return out
}

// needsNode reports whether local detection needs the Node object: for its pod CIDRs, or for its
// addresses when neither --node-ip nor (in NodeAddresses mode) --external-interfaces gives them.
func needsNode(cfg Config) bool {
	mode := LocalMode(cfg.DetectLocalMode)
	switch {
	case mode == NodeCIDR:
		return true
	case mode == NodeAddresses && len(cfg.ExternalInterfaces) > 0:
		return false
	}
	return cfg.NodeIP == ""
}

// runController watches the API, serves the probes and metrics, and syncs the node until ctx
// ends or one of them fails.
func runController(ctx context.Context, cfg Config, clients *kube.Clients, syncer *Syncer, choice DatapathChoice, log logr.Logger) error {
	pods, err := kube.PodInformer(clients.Core, cfg.NodeName)
	if err != nil {
		return err
	}
	mips, err := kube.MagicIPInformer(clients.MagicIP)
	if err != nil {
		return err
	}
	recorder := kube.NewRecorder(clients.Events, cfg.NodeName, log)
	taint, err := cfg.Taint()
	if err != nil {
		return err
	}
	node := nodestatus.NewReporter(clients.Core, cfg.NodeName, taint, log)
	record := nodereport.New(clients.MagicIP, clients.Core, cfg.NodeName, syncer.Datapath.Name(), time.Now(), log)
	addresses, err := cfg.AddressPolicy()
	if err != nil {
		return err
	}
	m := NewMetrics()
	m.setDatapath(choice)
	syncer.OnFlush = m.observeFlush
	c := NewController(ControllerConfig{
		MagicIPs: mips.GetStore(), Pods: pods.GetStore(), Syncer: syncer, NodeName: cfg.NodeName,
		DefaultInterface: cfg.HostInterface, ResyncPeriod: cfg.ResyncPeriod, MaxBackoff: cfg.MaxSyncBackoff, Addresses: addresses, Recorder: recorder, Node: node, Record: record, Metrics: m, Log: log,
		RemoteInformer: func(namespace, selector string) (cache.SharedIndexInformer, error) {
			return kube.ProducerInformer(clients.Core, namespace, selector, cfg.NodeName)
		},
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
	g.Go(func() error { node.Run(ctx); return nil })
	g.Go(func() error { record.Run(ctx); return nil })
	g.Go(func() error { c.Run(ctx, synced...); return nil })
	if err := g.Wait(); err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	return nil
}

// CleanupNode removes everything the agent owns on this node (the `cleanup` subcommand): the
// rules of both datapaths, whichever wrote them. Without a usable iptables the nftables table and
// the addresses are still removed, and the failure reported. With
// cfg.NodeName set it also removes from the Node the agent's condition and the --startup-taint,
// which nobody would remove once the agent is gone; without it the API is not touched.
func CleanupNode(cfg Config) error {
	var apiErr error
	if cfg.NodeName != "" {
		clients, err := newClients(cfg)
		if err == nil {
			err = forgetNode(cfg, clients)
		}
		apiErr = err
	}
	links, err := NewLinks(DefaultDummyInterface)
	if err != nil {
		return errors.Join(apiErr, err)
	}
	defer links.Close()
	dps, err := cleanupDatapaths()
	return errors.Join(apiErr, err, Cleanup(links, dps...))
}

// forgetNode removes the agent's condition and the startup taint from its Node.
func forgetNode(cfg Config, clients *kube.Clients) error {
	taint, err := cfg.Taint()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), forgetTimeout)
	defer cancel()
	return nodestatus.Forget(ctx, clients.Core, cfg.NodeName, taint)
}

// forgetTimeout bounds the API calls of a cleanup.
const forgetTimeout = 30 * time.Second
