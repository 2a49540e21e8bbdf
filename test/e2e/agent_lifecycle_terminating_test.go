package e2e

import (
	"bufio"
	"context"
	"fmt"
	"maps"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/magic-ip/magic-ip/test/harness"
)

// TestAgentTerminatingProducerKeepsServing: a graceful producer restart under a connect every
// 2 ms loses nothing. While the only producer terminates (deletionTimestamp set, still Ready) new
// connections keep going to it; a replacement takes them as soon as it is Ready; a connection
// established to the terminating producer is not cut by the switch; then the old one goes away.
func TestAgentTerminatingProducerKeepsServing(t *testing.T) {
	forEachBackend(t, testAgentTerminatingProducerKeepsServing)
}

func testAgentTerminatingProducerKeepsServing(t *testing.T, b backend) {
	e := newOneNode(t, b)
	ctx := t.Context()
	old := addProducer(t, e.c, e.node, "dd-old", harness.PodOptions{})
	eventually(t, 10*time.Second, "served", b.onlyAnswers(e.consumer.Netns, old.Name))
	established, err := b.dialKept(ctx, e.consumer.Netns)
	if err != nil {
		t.Fatal(err)
	}
	defer established.Close()
	if established.greeting != old.Name {
		t.Fatalf("kept connection answered by %q, want %s", established.greeting, old.Name)
	}
	pr := b.startProber(ctx, e.consumer.Netns, 2*time.Millisecond)

	if err := old.MarkTerminating(ctx); err != nil {
		t.Fatal(err)
	}
	before := pr.count(old.Name)
	eventually(t, 5*time.Second, "dd-old keeps answering while it terminates", func(context.Context) error {
		if n := pr.count(old.Name) - before; n < 200 {
			return fmt.Errorf("%d answers from %s since it started terminating (all outcomes: %v)", n, old.Name, pr.snapshot())
		}
		return nil
	})
	eventually(t, 5*time.Second, "the agent programs dd-old as terminating", ruleMentions(b.view(), e.node, old.Name+" (terminating"))

	repl := addProducer(t, e.c, e.node, "dd-new", harness.PodOptions{NotReady: true})
	if got := b.seen(ctx, e.consumer.Netns, 20); len(got) != 1 || !got[old.Name] {
		t.Errorf("with the replacement not Ready yet: outcomes %v, want only %s", got, old.Name)
	}
	if err := repl.SetReady(ctx, true); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "new connections go to the Ready replacement", b.onlyAnswers(e.consumer.Netns, repl.Name))
	if got, err := established.echo("still there?"); err != nil || got != "still there?" {
		t.Errorf("connection established to the terminating producer: echo %q (err %v), want it intact", got, err)
	}

	if err := old.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "dd-old's rules gone", func(ctx context.Context) error {
		if err := ruleMentions(b.view(), e.node, old.Name)(ctx); err == nil {
			return fmt.Errorf("rules still mention %s", old.Name)
		}
		return nil
	})
	after := pr.count(repl.Name)
	eventually(t, 5*time.Second, "the prober goes on after dd-old is gone", func(context.Context) error {
		if n := pr.count(repl.Name) - after; n < 100 {
			return fmt.Errorf("%d answers from %s since dd-old went (all outcomes: %v)", n, repl.Name, pr.snapshot())
		}
		return nil
	})
	got := pr.finish()
	for outcome, n := range got {
		if outcome != old.Name && outcome != repl.Name {
			t.Errorf("prober saw %q %d times; every connect must be answered (all: %v)", outcome, n, got)
		}
	}
	t.Logf("prober outcomes: %v", got)
}

// snapshot copies the outcomes so far.
func (p *prober) snapshot() map[string]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return maps.Clone(p.outcomes)
}

// ruleMentions is a condition: the node's rules (as v reads them) contain s.
func ruleMentions(v ruleView, n *harness.Node, s string) func(context.Context) error {
	return func(ctx context.Context) error {
		out, _, err := v.rules(ctx, n.Netns)
		if err != nil {
			return err
		}
		if !strings.Contains(out, s) {
			return fmt.Errorf("rules do not mention %q", s)
		}
		return nil
	}
}

// keptConn is a TCP connection to the magic address's APM port, kept open.
type keptConn struct {
	net.Conn
	r        *bufio.Reader
	greeting string
}

// dialKept connects from ns to the magic address and reads the greeting (the producer's name).
func (b backend) dialKept(ctx context.Context, ns *harness.Netns) (*keptConn, error) {
	var c net.Conn
	if err := ns.Do(func() (err error) {
		var d net.Dialer
		c, err = d.DialContext(ctx, "tcp", b.hostPort(apmPort))
		return err
	}); err != nil {
		return nil, err
	}
	k := &keptConn{Conn: c, r: bufio.NewReader(c)}
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	line, err := k.r.ReadString('\n')
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("greeting: %w", err)
	}
	k.greeting = strings.TrimSuffix(line, "\n")
	return k, nil
}

// echo sends one line and returns what the producer echoed, within 2 s.
func (k *keptConn) echo(s string) (string, error) {
	_ = k.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := fmt.Fprintln(k, s); err != nil {
		return "", err
	}
	line, err := k.r.ReadString('\n')
	return strings.TrimSuffix(line, "\n"), err
}
