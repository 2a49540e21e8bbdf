package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"

	"github.com/go-logr/logr"
	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/tools/clientcmd"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/magic-ip/magic-ip/agent/kube"
	"github.com/magic-ip/magic-ip/api/v1alpha1"
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
	mgr, err := newManager(cfg, log)
	if err != nil {
		return err
	}
	m := NewMetrics()
	if err := m.Register(metrics.Registry); err != nil {
		return fmt.Errorf("register metrics: %w", err)
	}
	r := &Reconciler{
		Client: mgr.GetClient(), NodeName: cfg.NodeName, DefaultInterface: cfg.HostInterface,
		ResyncPeriod: cfg.ResyncPeriod, Recorder: mgr.GetEventRecorder("magic-ip-agent"), Metrics: m, Log: log,
		Syncer: &Syncer{Ipt: ipt, Links: links, ExternalInterfaces: ext, Log: log},
	}
	if err := r.SetupWithManager(mgr); err != nil {
		return fmt.Errorf("set up controller: %w", err)
	}
	if err := errors.Join(mgr.AddHealthzCheck("ping", healthz.Ping), mgr.AddReadyzCheck("first-sync", r.Checker)); err != nil {
		return err
	}
	if err := mgr.Start(ctx); err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	return nil
}

func newManager(cfg Config, log logr.Logger) (ctrl.Manager, error) {
	restCfg, err := clientcmd.BuildConfigFromFlags("", cfg.Kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client config: %w", err)
	}
	restCfg.UserAgent = "magic-ip-agent/" + cfg.NodeName
	scheme := runtime.NewScheme()
	// Only the types the agent reads: registering every built-in API group costs memory.
	if err := errors.Join(corev1.AddToScheme(scheme), v1alpha1.AddToScheme(scheme)); err != nil {
		return nil, err
	}
	mgr, err := ctrl.NewManager(restCfg, ctrl.Options{
		Scheme:                 scheme,
		Logger:                 log,
		Metrics:                metricsserver.Options{BindAddress: cfg.MetricsAddr},
		HealthProbeBindAddress: cfg.HealthAddr,
		Cache: cache.Options{
			ByObject: map[client.Object]cache.ByObject{
				&corev1.Pod{}: {Field: fields.OneTermEqualSelector("spec.nodeName", cfg.NodeName), Transform: kube.SlimPod},
			},
			DefaultTransform: cache.TransformStripManagedFields(),
		},
	})
	if err != nil {
		return nil, fmt.Errorf("create manager: %w", err)
	}
	return mgr, nil
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
func CleanupNode() error {
	ipt, links, err := openNode()
	if err != nil {
		return err
	}
	defer links.Close()
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
