// Command kubectl-magic_ip is the kubectl plugin `kubectl magic-ip`: `status [NAME]` shows what
// magic-ip programmed on each node, `why POD` where one pod's connections to each magic address
// go. It reads the API only. Put it on PATH (make build writes bin/kubectl-magic_ip).
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/magic-ip/magic-ip/kubectlplugin"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := kubectlplugin.Main(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}
