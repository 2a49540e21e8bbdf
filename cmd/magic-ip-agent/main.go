// Command magic-ip-agent programs one node so that its magic IPs reach a Ready producer on the
// same node. `magic-ip-agent cleanup` removes everything it put on the node.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/magic-ip/magic-ip/agent"
	"github.com/magic-ip/magic-ip/internal/logging"
	"github.com/magic-ip/magic-ip/internal/version"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "magic-ip-agent:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("magic-ip-agent", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: magic-ip-agent [flags]\n       magic-ip-agent cleanup   remove every rule, chain and address the agent owns (idempotent)\n\nFlags:\n")
		fs.PrintDefaults()
	}
	var cfg agent.Config
	cfg.BindFlags(fs)
	showVersion := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return nil
		}
		return err
	}
	if *showVersion {
		fmt.Println("magic-ip-agent", version.String())
		return nil
	}
	log := logging.New(os.Stderr, cfg.Verbosity)
	if fs.Arg(0) == "cleanup" {
		if err := agent.CleanupNode(); err != nil {
			return err
		}
		log.Info("removed magic-ip rules, chains and addresses")
		return nil
	} else if fs.NArg() > 0 {
		return fmt.Errorf("unknown argument %q (see --help)", fs.Arg(0))
	}
	log.Info("magic-ip-agent", "version", version.Version, "commit", version.Commit, "buildDate", version.BuildDate)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return agent.Run(ctx, cfg, log)
}
