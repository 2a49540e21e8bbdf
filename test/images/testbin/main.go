// Command testbin is the one program in the real-node tests' images
// (localhost/magic-ip-test/testbin and, with the entrypoint "pause", localhost/magic-ip-test/pause):
//
//	testbin pause                        block until SIGTERM or SIGINT, exit 0 (the CRI sandbox image)
//	testbin echo --tcp-port N [--udp-port M]
//	                                     answer each TCP connection and UDP datagram with one line
//	                                     "<POD_NAME> <NODE_NAME> <peer ip>"
//	testbin probe --target HOST:PORT [--udp] [--interval 2ms] [--timeout 1s] [--listen :8080]
//	                                     dial the target again and again, count the outcomes, serve
//	                                     them on GET /stats (and the environment on GET /env)
//
// It uses only the standard library, so its image builds without downloading a module.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
)

// subcommand parses its flags from args and runs until it fails or ctx ends.
type subcommand func(ctx context.Context, log *slog.Logger, args []string) error

// commands maps a subcommand's name to its function.
func commands() map[string]subcommand {
	return map[string]subcommand{"pause": runPause, "echo": runEcho, "probe": runProbe}
}

func main() {
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := run(ctx, log, os.Args[1:], os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		log.Error("testbin failed", "err", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, log *slog.Logger, args []string, usageOut io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprintln(usageOut, "usage: testbin pause | echo --tcp-port N [--udp-port M] | probe --target HOST:PORT [flags]\n"+
			"run `testbin SUBCOMMAND --help` for its flags")
		if len(args) == 0 {
			return errors.New("no subcommand")
		}
		return flag.ErrHelp
	}
	cmd, ok := commands()[args[0]]
	if !ok {
		return fmt.Errorf("unknown subcommand %q (want pause, echo or probe)", args[0])
	}
	return cmd(ctx, log.With("cmd", args[0]), args[1:])
}

// newFlagSet returns a flag set for a subcommand that reports errors instead of exiting.
func newFlagSet(name string) *flag.FlagSet {
	return flag.NewFlagSet("testbin "+name, flag.ContinueOnError)
}

// runPause blocks until the context ends (SIGTERM or SIGINT): the sandbox container's process.
func runPause(ctx context.Context, log *slog.Logger, args []string) error {
	if err := newFlagSet("pause").Parse(args); err != nil {
		return err
	}
	log.Info("pausing until SIGTERM or SIGINT")
	<-ctx.Done()
	log.Info("signalled, exiting")
	return nil
}
