package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

// probeConfig is the probe's flags.
type probeConfig struct {
	target   string
	udp      bool
	interval time.Duration
	timeout  time.Duration
	listen   string
	// caller is sent, as one line, right after each TCP connect (echo --read-caller answers with it).
	caller string
}

func parseProbeFlags(args []string) (probeConfig, error) {
	var cfg probeConfig
	fs := newFlagSet("probe")
	fs.StringVar(&cfg.target, "target", "", "HOST:PORT to dial (required)")
	fs.BoolVar(&cfg.udp, "udp", false, "send a UDP datagram and read the reply instead of a TCP connect")
	fs.DurationVar(&cfg.interval, "interval", 2*time.Millisecond, "time between the starts of two attempts")
	fs.DurationVar(&cfg.timeout, "timeout", time.Second, "deadline of one attempt (dial and read)")
	fs.StringVar(&cfg.listen, "listen", ":8080", "address of the HTTP server (GET /stats, GET /env, POST /reset)")
	fs.StringVar(&cfg.caller, "caller", "", "over TCP, send this line right after connecting (e.g. $(DD_ENTITY_ID): who is calling)")
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	var errs []error
	if _, _, err := net.SplitHostPort(cfg.target); err != nil {
		errs = append(errs, fmt.Errorf("--target %q: %w", cfg.target, err))
	}
	if cfg.interval <= 0 {
		errs = append(errs, fmt.Errorf("--interval %s: must be positive", cfg.interval))
	}
	if cfg.timeout <= 0 {
		errs = append(errs, fmt.Errorf("--timeout %s: must be positive", cfg.timeout))
	}
	return cfg, errors.Join(errs...)
}

func (cfg probeConfig) proto() string {
	if cfg.udp {
		return "udp"
	}
	return "tcp"
}

// runProbe logs the environment, serves the HTTP endpoints and probes until ctx ends.
func runProbe(ctx context.Context, log *slog.Logger, args []string) error {
	cfg, err := parseProbeFlags(args)
	if err != nil {
		return err
	}
	log.Info("environment", "env", os.Environ())
	c := newCounters(cfg.target, cfg.proto(), time.Now())
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", cfg.listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.listen, err)
	}
	srv := &http.Server{Handler: probeMux(c), ReadHeaderTimeout: 5 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	log.Info("probing", "target", cfg.target, "proto", cfg.proto(), "interval", cfg.interval.String(), "http", ln.Addr().String())
	probeLoop(ctx, cfg, c)
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		return fmt.Errorf("shut down the HTTP server on %s: %w", cfg.listen, err)
	}
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve HTTP on %s: %w", cfg.listen, err)
	}
	return nil
}

// probeLoop starts an attempt every interval (one at a time) until ctx ends.
func probeLoop(ctx context.Context, cfg probeConfig, c *counters) {
	tick := time.NewTicker(cfg.interval)
	defer tick.Stop()
	for {
		answer, err := attempt(ctx, cfg)
		if ctx.Err() != nil {
			return // an attempt cut short by the shutdown is not counted
		}
		c.record(answer, err)
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// attempt dials the target once and reads one line: over TCP the line the server writes on
// accept, over UDP the reply to one datagram.
func attempt(ctx context.Context, cfg probeConfig) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, cfg.timeout)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, cfg.proto(), cfg.target)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	deadline, _ := ctx.Deadline()
	if err := conn.SetDeadline(deadline); err != nil {
		return "", fmt.Errorf("set deadline on %s: %w", conn.LocalAddr(), err)
	}
	if cfg.udp {
		if _, err := conn.Write([]byte("probe\n")); err != nil {
			return "", err
		}
		buf := make([]byte, 2048)
		n, err := conn.Read(buf)
		if err != nil {
			return "", err
		}
		return string(buf[:n]), nil
	}
	if cfg.caller != "" {
		if _, err := io.WriteString(conn, cfg.caller+"\n"); err != nil {
			return "", err
		}
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("read the answer from %s after %q: %w", cfg.target, line, err)
	}
	return line, nil
}

// probeMux serves GET /stats, GET /env and POST /reset.
func probeMux(c *counters) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, c.snapshot())
	})
	mux.HandleFunc("GET /env", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, environ(os.Environ()))
	})
	mux.HandleFunc("POST /reset", func(w http.ResponseWriter, _ *http.Request) {
		c.reset(time.Now())
		w.WriteHeader(http.StatusNoContent)
	})
	return mux
}

// environ turns KEY=VALUE strings into a map.
func environ(kv []string) map[string]string {
	m := make(map[string]string, len(kv))
	for _, e := range kv {
		k, v, _ := strings.Cut(e, "=")
		m[k] = v
	}
	return m
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v) // the client went away: nothing to do
}
