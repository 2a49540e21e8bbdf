package harness

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Build compiles a main package of the module (e.g. "./cmd/magic-ip-agent") into dir.
func Build(dir, pkg string) (string, error) {
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	out := filepath.Join(dir, filepath.Base(pkg))
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s: %w\n%s", pkg, err, b)
	}
	return out, nil
}

// Process is a program running inside a network namespace, its output kept for failure reports.
type Process struct {
	Name string
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
	err  error
}

// StartProcess runs bin with args inside the namespace. It is stopped in t.Cleanup, and its
// output is printed when the test failed.
func (n *Netns) StartProcess(t T, name, bin string, args ...string) *Process {
	t.Helper()
	return startProcess(t, name, exec.Command("ip", append([]string{"netns", "exec", n.Name, bin}, args...)...))
}

// StartHostProcess runs bin in the root network namespace (e.g. the webhook, which the API server
// on the root namespace's loopback calls). Stopped in t.Cleanup like StartProcess.
func StartHostProcess(t T, name, bin string, args ...string) *Process {
	t.Helper()
	return startProcess(t, name, exec.Command(bin, args...))
}

func startProcess(t T, name string, cmd *exec.Cmd) *Process {
	t.Helper()
	p := &Process{Name: name, cmd: cmd, out: &syncBuffer{}, done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	p.cmd.Env = append(os.Environ(), "KUBECONFIG=")
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		_ = p.Stop()
		if t.Failed() {
			t.Logf("--- output of %s (last 60 lines) ---\n%s", name, tail(p.Output(), 60))
		}
	})
	return p
}

// Stop sends SIGTERM and waits up to 10 s, then kills. It returns the exit error, if any.
func (p *Process) Stop() error {
	select {
	case <-p.done:
		return p.err
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
	return p.err
}

// Kill stops the process at once with SIGKILL, as a crash or an OOM kill would.
func (p *Process) Kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

// Exited reports whether the process has ended.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// WaitExit waits up to timeout for the process to end on its own: whether it ended, and its exit
// error (nil for status 0).
func (p *Process) WaitExit(timeout time.Duration) (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	case <-time.After(timeout):
		return false, nil
	}
}

// Output is everything the process wrote so far.
func (p *Process) Output() string { return p.out.String() }

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// tail is the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Pid is the process id (`ip netns exec` execs the program, so it is the program's own).
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// FailOnForbidden makes t fail when the process logged an authorization error: processes that
// act as a shipped service account must never be refused by the shipped RBAC.
func (p *Process) FailOnForbidden(t T) {
	t.Cleanup(func() {
		for _, line := range strings.Split(p.Output(), "\n") {
			if strings.Contains(line, "forbidden") {
				t.Errorf("%s was refused by the API server (shipped RBAC too narrow?): %s", p.Name, line)
			}
		}
	})
}
