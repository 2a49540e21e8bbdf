package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// buildTestbin compiles this program into a temporary directory.
func buildTestbin(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "testbin")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// proc is a running testbin whose JSON log lines are read as they come.
type proc struct {
	cmd   *exec.Cmd
	lines chan map[string]any
	done  chan error
}

func start(t *testing.T, bin string, env []string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, lines: make(chan map[string]any, 100), done: make(chan error, 1)}
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			var m map[string]any
			if json.Unmarshal(sc.Bytes(), &m) == nil {
				select {
				case p.lines <- m:
				default: // nobody waits for it
				}
			}
		}
		p.done <- cmd.Wait()
	}()
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	return p
}

// freeUDPPort returns a UDP port that was free a moment ago (--udp-port 0 means no UDP).
func freeUDPPort(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	return strconv.Itoa(pc.LocalAddr().(*net.UDPAddr).Port)
}

// waitLog returns the first log line with message msg.
func (p *proc) waitLog(t *testing.T, msg string) map[string]any {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		select {
		case m := <-p.lines:
			if m["msg"] == msg {
				return m
			}
		case err := <-p.done:
			t.Fatalf("%s exited before logging %q: %v", p.cmd.Args, msg, err)
		case <-deadline:
			t.Fatalf("%s did not log %q within 30s", p.cmd.Args, msg)
		}
	}
}

// stop sends SIGTERM and expects exit status 0.
func (p *proc) stop(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-p.done:
		if err != nil {
			t.Errorf("%s after SIGTERM: %v, want exit 0", p.cmd.Args, err)
		}
	case <-time.After(30 * time.Second):
		t.Errorf("%s still running 30s after SIGTERM", p.cmd.Args)
	}
}

func getJSON(t *testing.T, url string, v any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("GET %s: %s %s", url, resp.Status, resp.Header.Get("Content-Type"))
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
}

// waitStats polls GET /stats until cond holds.
func waitStats(t *testing.T, base string, what string, cond func(Stats) bool) Stats {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	var s Stats
	for {
		getJSON(t, base+"/stats", &s)
		if cond(s) {
			return s
		}
		select {
		case <-ctx.Done():
			t.Fatalf("stats never showed %s: %+v", what, s)
		case <-tick.C:
		}
	}
}

// TestProcesses runs the built program: echo on loopback with a probe against it over TCP and
// UDP, the probe's HTTP endpoints, refusals once the echo is gone, and pause's exit on SIGTERM.
func TestProcesses(t *testing.T) {
	bin := buildTestbin(t)
	echo := start(t, bin, []string{"POD_NAME=producer-a", "NODE_NAME=node-1"}, "echo", "--tcp-port", "0", "--udp-port", freeUDPPort(t))
	serving := echo.waitLog(t, "echo serving")
	tcpAddr := strings.Replace(serving["tcp"].(string), "[::]", "127.0.0.1", 1)
	udpPort := strings.Replace(serving["udpAddr"].(string), "[::]", "127.0.0.1", 1)
	for _, c := range []struct{ proto, target string }{{"tcp", tcpAddr}, {"udp", udpPort}} {
		t.Run(c.proto, func(t *testing.T) {
			args := []string{"probe", "--target", c.target, "--listen", "127.0.0.1:0", "--interval", "2ms"}
			if c.proto == "udp" {
				args = append(args, "--udp")
			}
			probe := start(t, bin, []string{"PROBE_MARK=x y=z"}, args...)
			env := probe.waitLog(t, "environment")
			if !strings.Contains(fmt.Sprint(env["env"]), "PROBE_MARK=x y=z") {
				t.Errorf("the environment log lacks PROBE_MARK: %v", env["env"])
			}
			base := "http://" + probe.waitLog(t, "probing")["http"].(string)
			s := waitStats(t, base, "50 answers", func(s Stats) bool { return s.OK >= 50 })
			if s.Answers["producer-a node-1"] != s.OK || s.Proto != c.proto || !strings.HasPrefix(s.LastAnswer, "producer-a node-1 127.0.0.1") {
				t.Errorf("stats %+v: want every answer from producer-a node-1 seeing 127.0.0.1", s)
			}
			var m map[string]string
			getJSON(t, base+"/env", &m)
			if m["PROBE_MARK"] != "x y=z" {
				t.Errorf("GET /env: PROBE_MARK=%q, want \"x y=z\"", m["PROBE_MARK"])
			}
			resp, err := http.Post(base+"/reset", "", nil)
			if err != nil || resp.StatusCode != http.StatusNoContent {
				t.Fatalf("POST /reset: %v %v", resp, err)
			}
			resp.Body.Close()
			if s2 := waitStats(t, base, "a reset", func(Stats) bool { return true }); s2.Attempts >= s.Attempts+10 || !s2.Since.After(s.Since) {
				t.Errorf("after POST /reset: %+v (before: %d attempts since %s)", s2, s.Attempts, s.Since)
			}
			probe.stop(t)
		})
	}
	echo.stop(t)

	probe := start(t, bin, nil, "probe", "--target", tcpAddr, "--listen", "127.0.0.1:0")
	base := "http://" + probe.waitLog(t, "probing")["http"].(string)
	s := waitStats(t, base, "10 refusals", func(s Stats) bool { return s.Refused >= 10 })
	if s.OK != 0 || s.Timeouts != 0 || s.Errors != 0 || !strings.Contains(s.LastError, "refused") {
		t.Errorf("with no echo: %+v, want only refusals", s)
	}
	probe.stop(t)

	pause := start(t, bin, nil, "pause")
	pause.waitLog(t, "pausing until SIGTERM or SIGINT")
	pause.stop(t)
}
