// Package logging builds the structured logger both binaries use.
package logging

import (
	"io"
	"log/slog"

	"github.com/go-logr/logr"
	"k8s.io/klog/v2"
)

// New logs JSON lines to w; logr's V(n) is slog level -n, so verbosity n shows V(0)…V(n).
// client-go's own logs (klog) go to the same logger.
func New(w io.Writer, verbosity int) logr.Logger {
	log := logr.FromSlogHandler(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: slog.Level(-verbosity)}))
	klog.SetLogger(log)
	return log
}
