package harness

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Netns is a named network namespace (as made by `ip netns add`) that the harness created.
type Netns struct {
	Name   string
	handle netns.NsHandle
}

// NewNetns creates the named network namespace with its loopback up. The caller deletes it.
func NewNetns(name string) (*Netns, error) {
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("ip netns add %s: %w: %s", name, err, strings.TrimSpace(string(out)))
	}
	h, err := netns.GetFromName(name)
	if err != nil {
		_ = exec.Command("ip", "netns", "del", name).Run()
		return nil, fmt.Errorf("open netns %s: %w", name, err)
	}
	n := &Netns{Name: name, handle: h}
	if err := n.withHandle(func(nl *netlink.Handle) error {
		lo, err := nl.LinkByName("lo")
		if err != nil {
			return err
		}
		return nl.LinkSetUp(lo)
	}); err != nil {
		return nil, errors.Join(fmt.Errorf("loopback up in %s: %w", name, err), n.Delete())
	}
	return n, nil
}

// Path is the namespace's bind-mount path, usable with nsenter --net= or setns.
func (n *Netns) Path() string { return filepath.Join("/run/netns", n.Name) }

// Delete removes the namespace. Links inside it go with it.
func (n *Netns) Delete() error {
	var errs []error
	if n.handle.IsOpen() {
		errs = append(errs, n.handle.Close())
	}
	if out, err := exec.Command("ip", "netns", "del", n.Name).CombinedOutput(); err != nil {
		errs = append(errs, fmt.Errorf("ip netns del %s: %w: %s", n.Name, err, strings.TrimSpace(string(out))))
	}
	return errors.Join(errs...)
}

// Do runs f on an OS thread that has entered the namespace. Sockets that f opens belong to the
// namespace and stay usable from any goroutine afterwards. The thread is never returned to the
// Go scheduler: it exits with the goroutine, so no other goroutine can inherit the namespace.
func (n *Netns) Do(f func() error) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with this goroutine
		if err := n.Enter(); err != nil {
			done <- err
			return
		}
		done <- f()
	}()
	return <-done
}

// Enter moves the calling goroutine's OS thread into the namespace, for a thread that works in
// several namespaces in turn. The caller must have locked the thread (runtime.LockOSThread) and
// never unlock it: the thread then exits with its goroutine, as in Do.
func (n *Netns) Enter() error {
	if err := netns.Set(n.handle); err != nil {
		return fmt.Errorf("enter netns %s: %w", n.Name, err)
	}
	return nil
}

// withHandle runs f with a netlink handle bound to the namespace.
func (n *Netns) withHandle(f func(*netlink.Handle) error) error {
	h, err := netlink.NewHandleAt(n.handle)
	if err != nil {
		return fmt.Errorf("netlink handle for %s: %w", n.Name, err)
	}
	defer h.Close()
	return f(h)
}

// Sysctl writes a network sysctl (e.g. "net.ipv4.ip_forward") inside the namespace.
func (n *Netns) Sysctl(key, value string) error {
	path := "/proc/sys/" + strings.ReplaceAll(key, ".", "/")
	return n.Do(func() error {
		if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
			return fmt.Errorf("sysctl %s=%s in %s: %w", key, value, n.Name, err)
		}
		return nil
	})
}

// ReadSysctl reads a network sysctl inside the namespace.
func (n *Netns) ReadSysctl(key string) (string, error) {
	var v string
	err := n.Do(func() error {
		b, err := os.ReadFile("/proc/sys/" + strings.ReplaceAll(key, ".", "/"))
		v = strings.TrimSpace(string(b))
		return err
	})
	return v, err
}

// Command prepares a command that runs inside the namespace (via `ip netns exec`).
func (n *Netns) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.Name, name}, args...)...)
}

// Run runs a command inside the namespace and returns its combined output.
func (n *Netns) Run(ctx context.Context, name string, args ...string) (string, error) {
	out, err := n.Command(ctx, name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s in %s: %w: %s", name, strings.Join(args, " "), n.Name, err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// TestNetns creates a fresh network namespace named after the test run and name (root required,
// see RequireRoot), deleted when the test ends.
func TestNetns(t T, name string) *Netns {
	t.Helper()
	RequireRoot(t)
	ns, err := NewNetns(RunPrefix() + "-" + name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := ns.Delete(); err != nil {
			t.Errorf("delete netns %s: %v", ns.Name, err)
		}
	})
	return ns
}
