package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// shutdownTimeout bounds how long a server waits for open requests when the agent stops.
const shutdownTimeout = 5 * time.Second

// probesHandler serves /healthz (always ok while the process serves) and /readyz (ok once ready
// returns nil, else 500 with the reason).
func probesHandler(ready func() error) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if err := ready(); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusInternalServerError)
			return
		}
		_, _ = fmt.Fprintln(w, "ok")
	})
	return mux
}

// metricsHandler serves m and extra, plus the Go runtime and process collectors, from a private
// registry.
func metricsHandler(m *Metrics, extra ...prometheus.Collector) (http.Handler, error) {
	reg := prometheus.NewRegistry()
	err := errors.Join(
		m.Register(reg),
		reg.Register(collectors.NewGoCollector()),
		reg.Register(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})),
	)
	for _, c := range extra {
		err = errors.Join(err, reg.Register(c))
	}
	if err != nil {
		return nil, fmt.Errorf("register metrics: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	return mux, nil
}

// startServers binds the probe and metrics endpoints that are not disabled.
func startServers(cfg Config, c *Controller, m *Metrics) ([]*server, error) {
	metrics, err := metricsHandler(m, c.Syncer.Datapath.Collectors()...)
	if err != nil {
		return nil, err
	}
	var out []*server
	for _, s := range []struct {
		name, addr string
		h          http.Handler
	}{{"health", cfg.HealthAddr, probesHandler(c.ReadyCheck)}, {"metrics", cfg.MetricsAddr, metrics}} {
		srv, err := listen(s.name, s.addr, s.h)
		if err != nil {
			for _, o := range out {
				o.ln.Close()
			}
			return nil, err
		}
		if srv != nil {
			out = append(out, srv)
		}
	}
	return out, nil
}

// server is an HTTP endpoint of the agent, listening from creation on.
type server struct {
	name string
	ln   net.Listener
	srv  *http.Server
}

// listen binds addr at once, so a taken port fails the start; "0" or "" means no server (nil).
func listen(name, addr string, h http.Handler) (*server, error) {
	if addr == "" || addr == "0" {
		return nil, nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%s endpoint: %w", name, err)
	}
	return &server{name: name, ln: ln, srv: &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}}, nil
}

// serve answers until ctx ends, then shuts down gracefully.
func (s *server) serve(ctx context.Context, log logr.Logger) error {
	stopped := make(chan error, 1)
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
		defer cancel()
		stopped <- s.srv.Shutdown(sctx)
	}()
	log.Info("serving", "endpoint", s.name, "address", s.ln.Addr().String())
	if err := s.srv.Serve(s.ln); !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("%s endpoint: %w", s.name, err)
	}
	if err := <-stopped; err != nil {
		return fmt.Errorf("%s endpoint shutdown: %w", s.name, err)
	}
	return nil
}
