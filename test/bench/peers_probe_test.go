package bench

import (
	"bufio"
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/magic-ip/magic-ip/test/harness"
)

// nsDialer opens TCP connections from inside a namespace on a pool of goroutines locked into it:
// probing every 2 ms with a new OS thread per connection (harness.Netns.DialTCP) would cost as
// much as what it measures.
type nsDialer struct {
	jobs chan func()
	wg   sync.WaitGroup
	once sync.Once
}

func newNSDialer(b *testing.B, ns *harness.Netns, workers int) *nsDialer {
	d := &nsDialer{jobs: make(chan func())}
	for range workers {
		d.wg.Go(func() {
			_ = ns.Do(func() error {
				for j := range d.jobs {
					j()
				}
				return nil
			})
		})
	}
	b.Cleanup(d.close)
	return d
}

func (d *nsDialer) close() {
	d.once.Do(func() {
		close(d.jobs)
		d.wg.Wait()
	})
}

// probe is one connection attempt: when it started and ended, and who greeted (the echo servers
// greet with their pod name).
type probe struct {
	start, end time.Time
	name       string
	err        error
	done       bool
}

func (p *probe) answeredBy(name string) bool { return p.done && p.err == nil && p.name == name }

// dial connects to target and reads the greeting, all within timeout. It runs on a worker.
func dialGreeting(ctx context.Context, target string, timeout time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var dl net.Dialer
	c, err := dl.DialContext(ctx, "tcp", target)
	if err != nil {
		return "", err
	}
	defer c.Close()
	// Close with a reset: a probe leaves no TIME_WAIT (client socket or conntrack entry) behind,
	// so probing thousands of times does not grow the node's conntrack table, which conntrack
	// clean-ups walk.
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	dead, _ := ctx.Deadline()
	_ = c.SetDeadline(dead)
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", err
	}
	return strings.TrimSuffix(line, "\n"), nil
}

// dialOnce dials target from the namespace and returns the probe.
func (d *nsDialer) dialOnce(ctx context.Context, target string, timeout time.Duration) *probe {
	p := &probe{}
	ch := make(chan struct{})
	d.jobs <- func() {
		p.start = time.Now()
		p.name, p.err = dialGreeting(ctx, target, timeout)
		p.end, p.done = time.Now(), true
		close(ch)
	}
	<-ch
	return p
}

// probeLoop starts a connection to target every `every` (each bounded by timeout; several may be
// in flight, so a dropped SYN does not stall the probing) until stop, called with the probes in
// the order they started after each one ends, returns true — or until limit passes (then it
// returns an error). In-flight probes are cancelled and waited for before it returns.
func (d *nsDialer) probeLoop(ctx context.Context, target string, every, timeout, limit time.Duration, stop func([]*probe) bool) ([]*probe, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		mu     sync.Mutex
		ps     []*probe
		wg     sync.WaitGroup
		ended  = make(chan struct{}, 1)
		result error
		stopAt time.Time
	)
	deadline := time.Now().Add(limit)
	tick := time.NewTicker(every)
	defer tick.Stop()
	launch := func() bool {
		p := &probe{}
		mu.Lock()
		ps = append(ps, p)
		mu.Unlock()
		wg.Add(1)
		job := func() {
			defer wg.Done()
			start := time.Now()
			name, err := dialGreeting(ctx, target, timeout)
			mu.Lock()
			p.start, p.end, p.name, p.err, p.done = start, time.Now(), name, err, true
			mu.Unlock()
			select {
			case ended <- struct{}{}:
			default:
			}
		}
		select {
		case d.jobs <- job:
			return true
		case <-ctx.Done():
			wg.Done()
			return false
		}
	}
	launch()
loop:
	for {
		select {
		case <-ctx.Done():
			result = ctx.Err()
			break loop
		case <-ended:
			mu.Lock()
			ok := stop(ps)
			if ok {
				stopAt = time.Now()
			}
			mu.Unlock()
			if ok {
				break loop
			}
		case <-tick.C:
			if time.Now().After(deadline) {
				result = errors.New("probing: no result within " + limit.String())
				break loop
			}
			launch()
		}
	}
	mu.Lock()
	if stopAt.IsZero() {
		stopAt = time.Now()
	}
	mu.Unlock()
	cancel()
	wg.Wait()
	// Keep what was known when probing stopped: probes cut short by the cancellation, and those
	// that never got a worker, are dropped.
	var out []*probe
	for _, p := range ps {
		if p.done && !p.end.After(stopAt) {
			out = append(out, p)
		}
	}
	return out, result
}

// doneStreak is the number of probes at the end of the completed prefix of ps (in start order)
// answered by name, and the index where that run starts.
func doneStreak(ps []*probe, name string) (streak, from int) {
	k := 0
	for k < len(ps) && ps[k].done {
		k++
	}
	from = k
	for from > 0 && ps[from-1].answeredBy(name) {
		from--
	}
	return k - from, from
}
