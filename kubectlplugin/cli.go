package kubectlplugin

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"
)

const usage = `kubectl magic-ip: what magic-ip does on each node, read from the API only.

Usage:
  kubectl magic-ip status [NAME] [flags]
      Per node and MagicIP (only NAME when given): programmed or not and why, the local producers
      (pod, IP), the last sync that changed the node's record, the datapath, and the agent:
      Ready, Down (no Ready agent pod on the node: the record may be stale and the rules left in
      place no longer follow changes) or NotReported (no record, or a record older than the
      agent pod).
  kubectl magic-ip why POD [-n NAMESPACE] [flags]
      For one consumer pod: the MagicIPs it was injected with, the variables and host aliases its
      spec holds for them, its node, and where its connections to each magic address go:
      LocalProducer, Refused, Dropped, Fallback, NotProgrammed (and why) or Unknown.

It needs only read access: get/list of pods, magicips and magicipnodes (magic-ip.dev), which the
shipped ClusterRole magic-ip-view adds to the built-in view role.

Flags:
`

// Options are the plugin's flags.
type Options struct {
	Kubeconfig, Context, Namespace, As string
	AsGroups                           stringList
	Output                             string
	AgentSelector, AgentNamespace      string
	Timeout                            time.Duration
}

type stringList []string

func (l *stringList) String() string     { return fmt.Sprint(*l) }
func (l *stringList) Set(v string) error { *l = append(*l, v); return nil }

func (o *Options) bind(fs *flag.FlagSet) {
	fs.StringVar(&o.Kubeconfig, "kubeconfig", "", "kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
	fs.StringVar(&o.Context, "context", "", "kubeconfig context to use")
	for _, n := range []string{"n", "namespace"} {
		fs.StringVar(&o.Namespace, n, "", "namespace of the pod for why (default: the context's)")
	}
	fs.StringVar(&o.As, "as", "", "user to impersonate")
	fs.Var(&o.AsGroups, "as-group", "group to impersonate (repeatable)")
	for _, n := range []string{"o", "output"} {
		fs.StringVar(&o.Output, n, "", "output format: json or yaml (default: a table)")
	}
	fs.StringVar(&o.AgentSelector, "agent-selector", DefaultAgentSelector, "label selector of the agent pods")
	fs.StringVar(&o.AgentNamespace, "agent-namespace", "", "namespace of the agent pods (default: every namespace)")
	fs.DurationVar(&o.Timeout, "request-timeout", 30*time.Second, "time limit for all API requests")
}

// Main runs the plugin with args (without the program name).
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var o Options
	fs := flag.NewFlagSet("kubectl magic-ip", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, usage); fs.PrintDefaults() }
	o.bind(fs)
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if o.Output != "" && o.Output != "json" && o.Output != "yaml" {
		return fmt.Errorf("-o %q: want json or yaml (or nothing, for a table)", o.Output)
	}
	if len(pos) == 0 {
		fs.Usage()
		return errors.New("missing command: status or why")
	}
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	switch cmd, rest := pos[0], pos[1:]; {
	case cmd == "status" && len(rest) <= 1:
		return o.status(ctx, stdout, first(rest))
	case cmd == "why" && len(rest) == 1:
		return o.why(ctx, stdout, rest[0])
	case cmd == "status" || cmd == "why":
		return fmt.Errorf("%s: unexpected arguments %q (see --help)", cmd, rest)
	}
	return fmt.Errorf("unknown command %q: want status or why (see --help)", pos[0])
}

func first(s []string) string {
	if len(s) == 0 {
		return ""
	}
	return s[0]
}

// parseInterleaved parses flags wherever they are among the positional arguments, which it returns.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos, args = append(pos, fs.Arg(0)), fs.Args()[1:]
	}
}

// client reads the API as the kubeconfig (and --as) says; it also returns the default namespace.
func (o *Options) client() (client.Client, string, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = o.Kubeconfig
	overrides := &clientcmd.ConfigOverrides{CurrentContext: o.Context}
	overrides.AuthInfo.Impersonate, overrides.AuthInfo.ImpersonateGroups = o.As, o.AsGroups
	cc := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, overrides)
	cfg, err := cc.ClientConfig()
	if err != nil {
		return nil, "", fmt.Errorf("kubeconfig: %w", err)
	}
	cfg.UserAgent = "kubectl-magic_ip"
	ns, _, err := cc.Namespace()
	if err != nil {
		return nil, "", fmt.Errorf("kubeconfig namespace: %w", err)
	}
	scheme, err := Scheme()
	if err != nil {
		return nil, "", err
	}
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		return nil, "", fmt.Errorf("API client: %w", err)
	}
	return c, ns, nil
}

func (o *Options) status(ctx context.Context, w io.Writer, name string) error {
	c, _, err := o.client()
	if err != nil {
		return err
	}
	snap, err := Read(ctx, c, o.AgentSelector, o.AgentNamespace)
	if err != nil {
		return err
	}
	rep, err := Status(snap, name)
	if err != nil {
		return err
	}
	if o.Output != "" {
		return o.print(w, rep)
	}
	return PrintStatus(w, rep, time.Now())
}

func (o *Options) why(ctx context.Context, w io.Writer, podName string) error {
	c, ns, err := o.client()
	if err != nil {
		return err
	}
	if o.Namespace != "" {
		ns = o.Namespace
	}
	var pod corev1.Pod
	if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: podName}, &pod); err != nil {
		return fmt.Errorf("get Pod %s/%s: %w", ns, podName, err)
	}
	snap, err := Read(ctx, c, o.AgentSelector, o.AgentNamespace)
	if err != nil {
		return err
	}
	rep := Why(snap, &pod)
	if o.Output != "" {
		return o.print(w, rep)
	}
	return PrintWhy(w, rep)
}

// print writes v as JSON or YAML.
func (o *Options) print(w io.Writer, v any) error {
	b, err := json.MarshalIndent(v, "", "    ")
	if err == nil && o.Output == "yaml" {
		b, err = yaml.JSONToYAML(b)
	}
	if err != nil {
		return fmt.Errorf("encode %s: %w", o.Output, err)
	}
	_, err = fmt.Fprintln(w, string(b))
	return err
}
