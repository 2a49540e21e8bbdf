package agent

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// Config is the agent's whole configuration, from flags with environment-variable twins.
type Config struct {
	NodeName           string
	HostInterface      string
	ExternalInterfaces []string
	NodeIP             string
	ResyncPeriod       time.Duration
	CleanupOnExit      bool
	ProcSysDir         string
	Kubeconfig         string
	MetricsAddr        string
	HealthAddr         string
	Verbosity          int
}

// BindFlags registers every flag on fs. Each flag's default comes from its environment variable
// when set (named in the help text), so a DaemonSet can configure the agent either way.
func (c *Config) BindFlags(fs *flag.FlagSet) {
	str := func(p *string, name, env, def, help string) {
		fs.StringVar(p, name, envOr(env, def), fmt.Sprintf("%s (env %s)", help, env))
	}
	str(&c.NodeName, "node-name", "NODE_NAME", "", "name of this node (required; in a DaemonSet: the downward API's spec.nodeName)")
	str(&c.HostInterface, "host-interface", "MAGIC_IP_HOST_INTERFACE", DefaultDummyInterface,
		"interface that carries the magic addresses; "+DefaultDummyInterface+" is created as a dummy link, any other name must exist (e.g. cni0)")
	str(&c.NodeIP, "node-ip", "NODE_IP", "", "the node's IP (downward API status.hostIP); the interfaces holding it are external unless --external-interfaces is set")
	str(&c.Kubeconfig, "kubeconfig", "KUBECONFIG", "", "kubeconfig file; empty means in-cluster config")
	str(&c.MetricsAddr, "metrics-bind-address", "MAGIC_IP_METRICS_BIND_ADDRESS", ":9402", "address of the Prometheus /metrics endpoint; 0 disables it")
	str(&c.HealthAddr, "health-probe-bind-address", "MAGIC_IP_HEALTH_PROBE_BIND_ADDRESS", ":9403", "address of /healthz and /readyz; 0 disables them")
	str(&c.ProcSysDir, "proc-sys-dir", "MAGIC_IP_PROC_SYS_DIR", "/proc/sys",
		"where the node's sysctls are read and written; a container's /proc/sys is read-only, so the DaemonSet mounts the host's /proc/sys/net under /host/proc/sys")
	ext := envOr("MAGIC_IP_EXTERNAL_INTERFACES", "")
	if ext != "" {
		c.ExternalInterfaces = strings.Split(ext, ",")
	}
	fs.Func("external-interfaces", "comma-separated uplink interfaces: traffic arriving there is from outside the node and is never redirected (env MAGIC_IP_EXTERNAL_INTERFACES; default: the interfaces holding --node-ip)",
		func(s string) error { c.ExternalInterfaces = splitNonEmpty(s); return nil })
	resync, err := time.ParseDuration(envOr("MAGIC_IP_RESYNC_PERIOD", "10s"))
	if err != nil {
		resync = 10 * time.Second
	}
	fs.DurationVar(&c.ResyncPeriod, "resync-period", resync, "how often to re-read the node's rules and repair drift; nothing is written when nothing drifted (env MAGIC_IP_RESYNC_PERIOD)")
	cleanup, _ := strconv.ParseBool(envOr("MAGIC_IP_CLEANUP_ON_EXIT", "false"))
	fs.BoolVar(&c.CleanupOnExit, "cleanup-on-exit", cleanup, "remove rules and addresses on exit; by default they stay so an agent restart never interrupts traffic (env MAGIC_IP_CLEANUP_ON_EXIT)")
	v, _ := strconv.Atoi(envOr("MAGIC_IP_VERBOSITY", "0"))
	fs.IntVar(&c.Verbosity, "v", v, "log verbosity: 2 one line per sync, 4 per object, 9 the rendered rules (env MAGIC_IP_VERBOSITY)")
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
	if c.ResyncPeriod < time.Second {
		errs = append(errs, fmt.Errorf("--resync-period %s is too short: use at least 1s", c.ResyncPeriod))
	}
	return errors.Join(errs...)
}

func envOr(key, def string) string {
	if v, ok := os.LookupEnv(key); ok {
		return v
	}
	return def
}

func splitNonEmpty(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
