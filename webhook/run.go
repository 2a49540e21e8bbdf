package webhook

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	crwebhook "sigs.k8s.io/controller-runtime/pkg/webhook"

	"github.com/magic-ip/magic-ip/api/v1alpha1"
	"github.com/magic-ip/magic-ip/certs"
	"github.com/magic-ip/magic-ip/internal/flagenv"
)

// Config is the webhook's configuration, from flags with environment-variable twins.
type Config struct {
	Port               int
	CertDir            string
	Kubeconfig         string
	MetricsAddr        string
	HealthAddr         string
	PprofAddr          string
	LeaderElect        bool
	LeaderElectionNS   string
	EnableHTTP2        bool
	Verbosity          int
	DisableStatusCtrl  bool
	NodeCountsInterval time.Duration
}

// BindFlags registers the flags on fs, each with its environment-variable twin; the command line
// wins.
func (c *Config) BindFlags(fs *flagenv.Set) {
	fs.Int(&c.Port, "port", "MAGIC_IP_WEBHOOK_PORT", 9443, "HTTPS port of "+Path)
	fs.String(&c.CertDir, "cert-dir", "MAGIC_IP_CERT_DIR", "/etc/magic-ip/tls", "directory with tls.crt and tls.key (as cert-manager writes them); reloaded when they change")
	fs.String(&c.Kubeconfig, "kubeconfig", "KUBECONFIG", "", "kubeconfig file; empty means in-cluster config")
	fs.String(&c.MetricsAddr, "metrics-bind-address", "MAGIC_IP_METRICS_BIND_ADDRESS", ":8080", "address of /metrics; 0 disables it")
	fs.String(&c.HealthAddr, "health-probe-bind-address", "MAGIC_IP_HEALTH_PROBE_BIND_ADDRESS", ":8081", "address of /healthz and /readyz")
	fs.String(&c.PprofAddr, "pprof-bind-address", "MAGIC_IP_PPROF_BIND_ADDRESS", "0", "address of Go's /debug/pprof profiles; 0 (the default) disables them")
	fs.Bool(&c.LeaderElect, "leader-elect", "MAGIC_IP_LEADER_ELECT", true, "elect one replica to write MagicIP status")
	fs.String(&c.LeaderElectionNS, "leader-election-namespace", "POD_NAMESPACE", "", "namespace of the leader-election Lease; empty means the pod's own")
	fs.Bool(&c.EnableHTTP2, "enable-http2", "MAGIC_IP_ENABLE_HTTP2", false, "serve HTTP/2 too (off by default: HTTP/1.1 only avoids the HTTP/2 rapid-reset class of attacks)")
	fs.Int(&c.Verbosity, "v", "MAGIC_IP_VERBOSITY", 0, "log verbosity: 2 status changes, 4 every injection")
	fs.Duration(&c.NodeCountsInterval, "node-counts-interval", "MAGIC_IP_NODE_COUNTS_INTERVAL", DefaultNodeCountsInterval, "least time between two status writes of a MagicIP that change only its node counts (PROGRAMMED, LOCAL-PRODUCERS, FAILING): bounds the writes during rollouts")
	fs.Bool(&c.DisableStatusCtrl, "disable-status-controller", "MAGIC_IP_DISABLE_STATUS_CONTROLLER", false, "serve the webhook only, without the MagicIP status controller")
}

// Validate returns every problem at once.
func (c *Config) Validate() error {
	var errs []error
	if c.Port < 1 || c.Port > 65535 {
		errs = append(errs, fmt.Errorf("--port %d: want 1-65535", c.Port))
	}
	if c.NodeCountsInterval <= 0 {
		errs = append(errs, fmt.Errorf("--node-counts-interval %s: want a positive duration", c.NodeCountsInterval))
	}
	if c.CertDir == "" {
		errs = append(errs, errors.New("--cert-dir must not be empty"))
	}
	return errors.Join(errs...)
}

// Run serves the webhook (all replicas) and the status controller (the leader) until ctx ends.
func Run(ctx context.Context, cfg Config, log logr.Logger) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	watcher, err := certs.NewWatcher(cfg.CertDir)
	if err != nil {
		return err
	}
	restCfg, err := clientcmd.BuildConfigFromFlags("", cfg.Kubeconfig)
	if err != nil {
		return fmt.Errorf("kubernetes client config: %w", err)
	}
	restCfg.UserAgent = "magic-ip-webhook"
	scheme := runtime.NewScheme()
	if err := errors.Join(corev1.AddToScheme(scheme), v1alpha1.AddToScheme(scheme)); err != nil {
		return err
	}
	tlsOpts := []func(*tls.Config){func(c *tls.Config) {
		c.GetCertificate = watcher.GetCertificate
		c.MinVersion = tls.VersionTLS12
		if !cfg.EnableHTTP2 {
			c.NextProtos = []string{"http/1.1"}
		}
	}}
	mgr, err := ctrl.NewManager(restCfg, ctrl.Options{
		Scheme:                  scheme,
		Logger:                  log,
		Metrics:                 metricsserver.Options{BindAddress: cfg.MetricsAddr},
		HealthProbeBindAddress:  cfg.HealthAddr,
		Cache:                   cache.Options{DefaultTransform: cache.TransformStripManagedFields()}, // nothing reads them
		PprofBindAddress:        cfg.PprofAddr,
		WebhookServer:           crwebhook.NewServer(crwebhook.Options{Port: cfg.Port, TLSOpts: tlsOpts}),
		LeaderElection:          cfg.LeaderElect,
		LeaderElectionID:        "magic-ip-webhook",
		LeaderElectionNamespace: cfg.LeaderElectionNS,
	})
	if err != nil {
		return fmt.Errorf("create manager: %w", err)
	}
	if err := mgr.Add(watcher); err != nil {
		return err
	}
	injections := NewInjectionsMetric()
	if err := metrics.Registry.Register(injections); err != nil {
		return err
	}
	inj := &Injector{MagicIPs: mgr.GetCache(), Log: log.WithName("inject"), Injections: injections}
	// Start the MagicIP informer with the cache, so the first admission request finds it synced;
	// every change makes the next request rebuild the injector's catalog.
	informer, err := mgr.GetCache().GetInformer(ctx, &v1alpha1.MagicIP{})
	if err != nil {
		return fmt.Errorf("MagicIP informer: %w", err)
	}
	invalidate := func(any) { inj.Invalidate() }
	if _, err := informer.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc: invalidate, DeleteFunc: invalidate, UpdateFunc: func(_, _ any) { inj.Invalidate() },
	}); err != nil {
		return fmt.Errorf("MagicIP informer: %w", err)
	}
	mgr.GetWebhookServer().Register(Path, inj.Webhook())
	if !cfg.DisableStatusCtrl {
		if err := (&StatusReconciler{Client: mgr.GetClient(), Log: log.WithName("status"), NodeCountsInterval: cfg.NodeCountsInterval}).SetupWithManager(mgr); err != nil {
			return fmt.Errorf("set up status controller: %w", err)
		}
	}
	cacheSynced := func(req *http.Request) error {
		if !mgr.GetCache().WaitForCacheSync(req.Context()) {
			return errors.New("MagicIP cache not synced")
		}
		return nil
	}
	if err := errors.Join(
		mgr.AddHealthzCheck("ping", healthz.Ping),
		mgr.AddReadyzCheck("certificate", watcher.Checker),
		mgr.AddReadyzCheck("webhook-server", mgr.GetWebhookServer().StartedChecker()),
		mgr.AddReadyzCheck("magicip-cache", cacheSynced),
	); err != nil {
		return err
	}
	log.Info("starting", "port", cfg.Port, "certDir", cfg.CertDir, "leaderElect", cfg.LeaderElect)
	return mgr.Start(ctx)
}
