// Command magic-ip-webhook injects magic-IP endpoints into consumer pods and keeps MagicIP status.
// `magic-ip-webhook certs generate` writes a CA and serving certificate for clusters without
// cert-manager and prints the caBundle.
package main

import (
	"context"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	ctrl "sigs.k8s.io/controller-runtime"

	"github.com/magic-ip/magic-ip/certs"
	"github.com/magic-ip/magic-ip/internal/flagenv"
	"github.com/magic-ip/magic-ip/internal/logging"
	"github.com/magic-ip/magic-ip/internal/version"
	"github.com/magic-ip/magic-ip/webhook"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "magic-ip-webhook:", err)
		os.Exit(1)
	}
}

// flags binds the webhook's flags (each with its environment twin, read through lookup) to cfg.
func flags(cfg *webhook.Config, showVersion *bool, lookup func(string) (string, bool)) *flagenv.Set {
	fe := flagenv.NewCommand("magic-ip-webhook", "Usage: magic-ip-webhook [flags]\n       magic-ip-webhook certs generate --service S --namespace N --out DIR [--host H]...\n\nFlags:\n", lookup)
	cfg.BindFlags(fe)
	fe.FlagSet().BoolVar(showVersion, "version", false, "print the version and exit")
	return fe
}

func run(args []string) error {
	if len(args) >= 2 && args[0] == "certs" && args[1] == "generate" {
		return generate(args[2:])
	}
	var cfg webhook.Config
	var showVersion bool
	fs := flags(&cfg, &showVersion, os.LookupEnv)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if showVersion {
		fmt.Println("magic-ip-webhook", version.String())
		return nil
	}
	if fs.FlagSet().NArg() > 0 {
		return fmt.Errorf("unknown argument %q (see --help)", fs.FlagSet().Arg(0))
	}
	log := logging.New(os.Stderr, cfg.Verbosity)
	// controller-runtime's own logs go to the same structured log (logging.New routes
	// client-go's). Until SetLogger is called, every logger controller-runtime derives is kept in
	// memory: one per admission request.
	ctrl.SetLogger(log)
	log.Info("magic-ip-webhook", "version", version.Version, "commit", version.Commit, "buildDate", version.BuildDate)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return webhook.Run(ctx, cfg, log)
}

func generate(args []string) error {
	fs := flag.NewFlagSet("magic-ip-webhook certs generate", flag.ContinueOnError)
	var o certs.Options
	var out string
	fs.StringVar(&o.Service, "service", "magic-ip-webhook", "webhook Service name")
	fs.StringVar(&o.Namespace, "namespace", "magic-ip-system", "webhook Service namespace")
	fs.StringVar(&out, "out", "", "directory to write ca.crt, tls.crt and tls.key into (required)")
	fs.DurationVar(&o.Validity, "validity", 365*24*time.Hour, "validity of the serving certificate")
	fs.Func("host", "extra DNS name or IP address for the certificate (repeatable)", func(s string) error {
		o.Hosts = append(o.Hosts, strings.TrimSpace(s))
		return nil
	})
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if out == "" {
		return errors.New("--out is required")
	}
	caPEM, err := certs.Generate(out, o)
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "wrote %s/{ca.crt,tls.crt,tls.key}; caBundle for the MutatingWebhookConfiguration:\n", out)
	fmt.Println(base64.StdEncoding.EncodeToString(caPEM))
	return nil
}
