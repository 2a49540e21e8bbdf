package agent

import (
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// flusher deletes stale UDP conntrack entries off the sync's path. A sync that made flows stale
// (a producer gone, a service gone) applies its rules, hands the services' address:ports to the
// flusher and returns; the flusher deletes their entries right after, in the background. The
// deletion walks the kernel's whole conntrack hash, shared by every namespace (262,144 buckets
// on the 2-core test VM: some 9 ms), so a sync that waited for it converged the node's other
// MagicIPs that much later; and targets handed over while a flush runs are deleted together by
// the next one, so a burst of changes (a rollout) walks the table once per flush, not once per
// sync.
//
// Order is kept: a flush starts after the sync that queued it applied its rules, so an entry it
// finds was either made before them (stale: deleted) or by them (deleted too, harmlessly: the
// flow's next packet is redirected again by the same rules). A flush queued by a later sync
// never runs before an earlier one, as there is one flush at a time.
type flusher struct {
	// open is called by add, on the syncing thread, in the node's network namespace, before a
	// flush goroutine starts: what it returns deletes the UDP entries sent to targets there,
	// whatever thread calls it, and is closed when the goroutine ends (openConntrack).
	open func() (conntrackDeleter, error)
	// done is told of every flush: its targets, what it deleted, how long it took and its error.
	done func(FlushResult)

	mu      sync.Mutex
	settled *sync.Cond
	// pending are the targets of the next flush, in the order handed over; queuedSet the same,
	// to keep each once (a first sync hands over every UDP service: thousands at 1,000 MagicIPs).
	pending   []netip.AddrPort
	queuedSet map[netip.AddrPort]struct{}
	running   bool
	// queued counts the add calls; finished is the count the last finished flush covered.
	queued, finished uint64
}

// FlushResult is one background conntrack flush.
type FlushResult struct {
	Targets []netip.AddrPort
	Deleted uint
	Took    time.Duration
	Err     error
}

// conntrackDeleter deletes UDP conntrack entries in one network namespace.
type conntrackDeleter interface {
	Delete(targets []netip.AddrPort) (uint, error)
	Close()
}

// openConntrack opens a netfilter netlink socket in the calling thread's network namespace.
func openConntrack() (conntrackDeleter, error) {
	h, err := netlink.NewHandle(unix.NETLINK_NETFILTER)
	if err != nil {
		return nil, fmt.Errorf("netfilter netlink socket: %w", err)
	}
	return handleDeleter{h}, nil
}

type handleDeleter struct{ h *netlink.Handle }

func (d handleDeleter) Delete(targets []netip.AddrPort) (uint, error) {
	return flushConntrackTo(d.h, targets)
}
func (d handleDeleter) Close() { d.h.Close() }

func newFlusher(open func() (conntrackDeleter, error), done func(FlushResult)) *flusher {
	f := &flusher{open: open, done: done}
	f.settled = sync.NewCond(&f.mu)
	return f
}

// add queues targets (each kept once) and starts a flush unless one runs; the running one
// flushes them next. Call it from the node's network namespace.
func (f *flusher) add(targets []netip.AddrPort) {
	if len(targets) == 0 {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.queuedSet == nil {
		f.queuedSet = make(map[netip.AddrPort]struct{}, len(targets))
	}
	for _, t := range targets {
		if _, ok := f.queuedSet[t]; !ok {
			f.queuedSet[t] = struct{}{}
			f.pending = append(f.pending, t)
		}
	}
	f.queued++
	if f.running {
		return
	}
	d, err := f.open()
	if err != nil {
		targets, f.pending, f.queuedSet, f.finished = f.pending, nil, nil, f.queued
		if f.done != nil {
			f.done(FlushResult{Targets: targets, Err: err})
		}
		return
	}
	f.running = true
	go f.run(d)
}

// run flushes what is pending through d until nothing is, then closes d and ends.
func (f *flusher) run(d conntrackDeleter) {
	defer d.Close()
	f.mu.Lock()
	for len(f.pending) > 0 {
		targets, covers := f.pending, f.queued
		f.pending, f.queuedSet = nil, nil
		f.mu.Unlock()
		start := time.Now()
		n, err := d.Delete(targets)
		if f.done != nil {
			f.done(FlushResult{Targets: targets, Deleted: n, Took: time.Since(start), Err: err})
		}
		f.mu.Lock()
		f.finished = covers
		f.settled.Broadcast()
	}
	f.running = false
	f.mu.Unlock()
}

// wait returns once every flush queued before the call has finished.
func (f *flusher) wait() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for want := f.queued; f.finished < want; {
		f.settled.Wait()
	}
}
