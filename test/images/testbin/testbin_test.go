package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"syscall"
	"testing"
	"time"
)

func TestClassify(t *testing.T) {
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}
	cases := map[string]struct {
		err  error
		want outcome
	}{
		"nil":                 {nil, outcomeOK},
		"refused":             {refused, outcomeRefused},
		"refused, wrapped":    {fmt.Errorf("read: %w", refused), outcomeRefused},
		"deadline":            {&net.OpError{Op: "read", Err: os.ErrDeadlineExceeded}, outcomeTimeout},
		"context deadline":    {context.DeadlineExceeded, outcomeTimeout},
		"EOF before the line": {fmt.Errorf("read: %w", io.EOF), outcomeOther},
		"host unreachable":    {&net.OpError{Op: "dial", Err: os.NewSyscallError("connect", syscall.EHOSTUNREACH)}, outcomeOther},
		"reset":               {&net.OpError{Op: "read", Err: os.NewSyscallError("read", syscall.ECONNRESET)}, outcomeOther},
	}
	for name, c := range cases {
		if got := classify(c.err); got != c.want {
			t.Errorf("%s: classify(%v) = %d, want %d", name, c.err, got, c.want)
		}
	}
}

func TestAnswerKey(t *testing.T) {
	cases := map[string]struct {
		line, want string
		ok         bool
	}{
		"full line":        {"producer-a node-1 10.244.1.5\n", "producer-a node-1", true},
		"no peer":          {"producer-a node-1", "producer-a node-1", true},
		"one field":        {"producer-a\n", "", false},
		"empty":            {"", "", false},
		"extra whitespace": {"  p \t n  1.2.3.4 \n", "p n", true},
	}
	for name, c := range cases {
		got, err := answerKey(c.line)
		if got != c.want || (err == nil) != c.ok {
			t.Errorf("%s: answerKey(%q) = %q, %v; want %q, ok=%v", name, c.line, got, err, c.want, c.ok)
		}
	}
}

func TestCounters(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	c := newCounters("10.0.0.1:80", "tcp", t0)
	c.record("p1 n1 10.0.0.9\n", nil)
	c.record("p1 n1 10.0.0.9\n", nil)
	c.record("p2 n2 10.0.0.9\n", nil)
	c.record("", &net.OpError{Op: "dial", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)})
	c.record("", os.ErrDeadlineExceeded)
	c.record("garbage\n", nil) // a line without two fields is an error, not an answer
	s := c.snapshot()
	want := Stats{Target: "10.0.0.1:80", Proto: "tcp", Since: t0, Attempts: 6, OK: 3, Refused: 1, Timeouts: 1, Errors: 1,
		LastAnswer: "p2 n2 10.0.0.9"}
	got := s
	got.Answers, got.LastError = nil, ""
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("stats = %+v\nwant    %+v", got, want)
	}
	if s.Answers["p1 n1"] != 2 || s.Answers["p2 n2"] != 1 || len(s.Answers) != 2 {
		t.Errorf("answers = %v", s.Answers)
	}
	if s.LastError == "" {
		t.Error("no last error")
	}
	s.Answers["p1 n1"] = 100 // a snapshot is a copy
	if c.snapshot().Answers["p1 n1"] != 2 {
		t.Error("changing a snapshot changed the counters")
	}
	t1 := t0.Add(time.Minute)
	c.reset(t1)
	if s := c.snapshot(); s.Attempts != 0 || s.OK != 0 || len(s.Answers) != 0 || s.LastError != "" || !s.Since.Equal(t1) || s.Target != "10.0.0.1:80" {
		t.Errorf("after reset: %+v", s)
	}
}

func TestParseProbeFlags(t *testing.T) {
	cfg, err := parseProbeFlags([]string{"--target", "10.0.0.1:80", "--udp", "--interval", "5ms"})
	if err != nil || cfg.proto() != "udp" || cfg.interval != 5*time.Millisecond || cfg.timeout != time.Second || cfg.listen != ":8080" {
		t.Errorf("cfg = %+v, %v", cfg, err)
	}
	for _, bad := range [][]string{{}, {"--target", "10.0.0.1"}, {"--target", "a:1", "--interval", "0s"}, {"--target", "a:1", "--timeout", "-1s"}} {
		if _, err := parseProbeFlags(bad); err == nil {
			t.Errorf("parseProbeFlags(%q): no error", bad)
		}
	}
}

func TestPeerIP(t *testing.T) {
	cases := map[string]net.Addr{
		"10.0.0.1":  &net.TCPAddr{IP: net.ParseIP("10.0.0.1"), Port: 1},
		"10.0.0.2":  &net.UDPAddr{IP: net.ParseIP("::ffff:10.0.0.2"), Port: 1}, // IPv4 on a dual-stack socket
		"fd00::1":   &net.TCPAddr{IP: net.ParseIP("fd00::1"), Port: 1},
		"127.0.0.1": &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1).To4(), Port: 1},
	}
	for want, a := range cases {
		if got := peerIP(a); got != want {
			t.Errorf("peerIP(%v) = %q, want %q", a, got, want)
		}
	}
}

// TestEchoAndAttemptOnLoopback runs the echo server and single probe attempts over real loopback
// sockets: the answers, and refusals from a closed TCP and a closed UDP port.
func TestEchoAndAttemptOnLoopback(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() {
		served <- serveEcho(ctx, slog.New(slog.DiscardHandler), identity{"pod-a", "node-1", false}, ln, pc)
	}()
	for _, cfg := range []probeConfig{{target: ln.Addr().String()}, {target: pc.LocalAddr().String(), udp: true}} {
		cfg.timeout = 5 * time.Second
		got, err := attempt(t.Context(), cfg)
		if err != nil || got != "pod-a node-1 127.0.0.1\n" {
			t.Errorf("%s %s: %q, %v; want \"pod-a node-1 127.0.0.1\\n\"", cfg.proto(), cfg.target, got, err)
		}
	}
	cancel()
	if err := <-served; err != nil {
		t.Errorf("serveEcho: %v", err)
	}
	// An echo that reads the caller's line answers with it; without one, with "-".
	ctx2, cancel2 := context.WithCancel(t.Context())
	ln2, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		served <- serveEcho(ctx2, slog.New(slog.DiscardHandler), identity{"pod-a", "node-1", true}, ln2, nil)
	}()
	for caller, want := range map[string]string{"uid-1234": "pod-a node-1 127.0.0.1 uid-1234\n", "": "pod-a node-1 127.0.0.1 -\n"} {
		got, err := attempt(t.Context(), probeConfig{target: ln2.Addr().String(), timeout: 5 * time.Second, caller: caller})
		if err != nil || got != want {
			t.Errorf("--read-caller, caller %q: %q, %v; want %q", caller, got, err, want)
		}
	}
	cancel2()
	if err := <-served; err != nil {
		t.Errorf("serveEcho --read-caller: %v", err)
	}
	// Both sockets are closed now: the kernel refuses.
	for _, cfg := range []probeConfig{{target: ln.Addr().String()}, {target: pc.LocalAddr().String(), udp: true}} {
		cfg.timeout = 5 * time.Second
		_, err := attempt(t.Context(), cfg)
		if classify(err) != outcomeRefused {
			t.Errorf("%s %s after close: %v, want connection refused", cfg.proto(), cfg.target, err)
		}
	}
}

func TestRunUsage(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	if err := run(t.Context(), log, nil, io.Discard); err == nil {
		t.Error("no subcommand: no error")
	}
	if err := run(t.Context(), log, []string{"--help"}, io.Discard); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("--help: %v", err)
	}
	if err := run(t.Context(), log, []string{"frobnicate"}, io.Discard); err == nil {
		t.Error("unknown subcommand: no error")
	}
}
