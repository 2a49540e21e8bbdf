package agent

import (
	"errors"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"
)

// gatedDeleter is a conntrackDeleter whose Delete reports its targets on started and returns
// only when told to on release; it counts the Deletes running at once.
type gatedDeleter struct {
	started chan []netip.AddrPort
	release chan struct{}
	mu      *sync.Mutex
	running *int
	most    *int
}

func (d gatedDeleter) Delete(targets []netip.AddrPort) (uint, error) {
	d.mu.Lock()
	*d.running++
	*d.most = max(*d.most, *d.running)
	d.mu.Unlock()
	d.started <- slices.Clone(targets)
	<-d.release
	d.mu.Lock()
	*d.running--
	d.mu.Unlock()
	return uint(len(targets)), nil
}

func (gatedDeleter) Close() {}

// receive waits for a value on c, failing the test after a deadline.
func receive[T any](t *testing.T, c <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-c:
		return v
	case <-time.After(10 * time.Second):
		t.Fatalf("no %s within 10 s", what)
		var zero T
		return zero
	}
}

// TestFlusher: targets handed over while a flush runs are deleted together by the next one (a
// burst walks the conntrack table once per flush, not once per sync), each once; never two
// flushes at once (one never overtakes another); wait returns only when every flush queued before
// it has finished; a failure to open the socket is reported and loses nothing queued later.
func TestFlusher(t *testing.T) {
	a, b, c := netip.MustParseAddrPort("169.254.0.1:53"), netip.MustParseAddrPort("169.254.0.2:53"), netip.MustParseAddr("fd00::1")
	c6 := netip.AddrPortFrom(c, 8125)
	tests := []struct {
		name string
		// bursts are handed over in order; each burst's adds come while the flush of the one
		// before is still running.
		bursts [][][]netip.AddrPort
		want   [][]netip.AddrPort
	}{
		{"one", [][][]netip.AddrPort{{{a}}}, [][]netip.AddrPort{{a}}},
		{"adds during a flush go together into the next",
			[][][]netip.AddrPort{{{a}}, {{b}, {b, c6}, {a}}},
			[][]netip.AddrPort{{a}, {b, c6, a}}},
		{"three rounds", [][][]netip.AddrPort{{{a, b}}, {{c6}}, {{a}}}, [][]netip.AddrPort{{a, b}, {c6}, {a}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var mu sync.Mutex
			var running, most, opens int
			d := gatedDeleter{started: make(chan []netip.AddrPort), release: make(chan struct{}), mu: &mu, running: &running, most: &most}
			var results []FlushResult
			f := newFlusher(func() (conntrackDeleter, error) {
				opens++ // called under f.mu
				return d, nil
			}, func(r FlushResult) { results = append(results, r) })
			var got [][]netip.AddrPort
			for i, burst := range tt.bursts {
				for _, targets := range burst {
					f.add(targets)
				}
				if i == 0 {
					got = append(got, receive(t, d.started, "first flush"))
				}
				if i > 0 {
					// The flush of the burst before is running: let it end; this one's starts.
					d.release <- struct{}{}
					got = append(got, receive(t, d.started, "flush of the next burst"))
				}
			}
			waited := make(chan struct{})
			go func() { f.wait(); close(waited) }()
			select {
			case <-waited:
				t.Fatal("wait returned while a flush was running")
			default:
			}
			d.release <- struct{}{}
			receive(t, waited, "end of wait")
			if !slices.EqualFunc(got, tt.want, slices.Equal) {
				t.Errorf("flushes %v, want %v", got, tt.want)
			}
			f.mu.Lock()
			defer f.mu.Unlock()
			if most != 1 {
				t.Errorf("%d flushes ran at once, want 1", most)
			}
			if opens != 1 {
				t.Errorf("%d sockets opened for one run of flushes, want 1", opens)
			}
			if len(results) != len(tt.want) {
				t.Errorf("%d results told, want %d", len(results), len(tt.want))
			}
		})
	}
}

// TestFlusherOpenFails: a socket that cannot be opened is reported with its targets, wait does
// not hang, and the next add tries again.
func TestFlusherOpenFails(t *testing.T) {
	a := netip.MustParseAddrPort("169.254.0.1:53")
	var results []FlushResult
	fail := true
	var mu sync.Mutex
	var running, most int
	d := gatedDeleter{started: make(chan []netip.AddrPort, 1), release: make(chan struct{}, 1), mu: &mu, running: &running, most: &most}
	f := newFlusher(func() (conntrackDeleter, error) {
		if fail {
			return nil, errors.New("no socket")
		}
		return d, nil
	}, func(r FlushResult) { results = append(results, r) })
	f.add([]netip.AddrPort{a})
	f.wait()
	if len(results) != 1 || results[0].Err == nil || !slices.Equal(results[0].Targets, []netip.AddrPort{a}) {
		t.Fatalf("results %+v, want one error for %v", results, a)
	}
	fail = false
	d.release <- struct{}{}
	f.add([]netip.AddrPort{a})
	f.wait()
	if got := receive(t, d.started, "retried flush"); !slices.Equal(got, []netip.AddrPort{a}) {
		t.Errorf("retried flush of %v, want %v", got, a)
	}
}
