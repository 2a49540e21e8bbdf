// Command magic-ip-agent programs one node so that its magic IPs reach a Ready producer on the
// same node. `magic-ip-agent cleanup` removes everything it put on the node.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/magic-ip/magic-ip/agent"
	"github.com/magic-ip/magic-ip/internal/flagenv"
	"github.com/magic-ip/magic-ip/internal/logging"
	"github.com/magic-ip/magic-ip/internal/version"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "magic-ip-agent:", err)
		os.Exit(1)
	}
}

// flags binds the agent's flags (each with its environment twin, read through lookup) to cfg.
func flags(cfg *agent.Config, showVersion *bool, lookup func(string) (string, bool)) *flagenv.Set {
	fe := flagenv.NewCommand("magic-ip-agent", "Usage: magic-ip-agent [flags]\n       magic-ip-agent [flags] cleanup   remove every rule, chain and address the agent owns (idempotent);\n                                        with --node-name also its Node condition and --startup-taint\n\nFlags:\n", lookup)
	cfg.BindFlags(fe)
	fe.FlagSet().BoolVar(showVersion, "version", false, "print the version and exit")
	return fe
}

func run(args []string) error {
	var cfg agent.Config
	var showVersion bool
	fs := flags(&cfg, &showVersion, os.LookupEnv)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if showVersion {
		fmt.Println("magic-ip-agent", version.String())
		return nil
	}
	log := logging.New(os.Stderr, cfg.Verbosity)
	if fs.FlagSet().Arg(0) == "cleanup" {
		if err := agent.CleanupNode(cfg); err != nil {
			return err
		}
		log.Info("removed magic-ip rules, chains and addresses", "node", cfg.NodeName)
		return nil
	} else if fs.FlagSet().NArg() > 0 {
		return fmt.Errorf("unknown argument %q (see --help)", fs.FlagSet().Arg(0))
	}
	log.Info("magic-ip-agent", "version", version.Version, "commit", version.Commit, "buildDate", version.BuildDate)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return agent.Run(ctx, cfg, log)
}
