package agent

import (
	"context"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
)

// DefaultCountersMinInterval is the least time between two reads of the kernel's counters at
// scrape time: scrapes in between answer with the last figures.
const DefaultCountersMinInterval = 5 * time.Second

// counterReadTimeout bounds one read of the kernel's counters.
const counterReadTimeout = 10 * time.Second

// NoProducerCounters is the Prometheus collector of the connections refused or dropped on this
// node because no local producer took them, per MagicIP, port, protocol and action: the packet
// counters of the verdict rules (one per port and family, matching only the first packet of a
// connection: in MAGIC-IP-INPUT of iptables and of ip6tables, in chain input of table inet
// magic-ip with nftables). Both families count in the same series. The rules live in sources
// (iptables and ip6tables, each a chain of its own; nftables: one table for both) that are read
// and rewritten apart: each source is read at scrape time, at most once per MinInterval, and just
// before a write that rewrites its chain (which sets its counters back to 0); a source no write
// put rules in (ip6tables while no MagicIP has an IPv6 address) is never read. The collector adds
// up what each read found since the previous one, so its counters only go up. The series are
// those of the rules last written: a MagicIP or port that goes away takes its series along.
type NoProducerCounters struct {
	// Read lists the verdict rules' packet counters of one source (iptables: readIptablesCounters,
	// the source being the command; nftables: the datapath's netlink read).
	Read func(ctx context.Context, source string) (map[counterKey]uint64, error)
	// MinInterval: scrapes read each source at most this often (0: at every scrape).
	MinInterval time.Duration
	Now         func() time.Time
	Log         logr.Logger

	desc, readsDesc *prometheus.Desc

	mu    sync.Mutex
	tally tally
	reads uint64
}

// NewNoProducerCounters reads the node's kernel counters at most once per minInterval at scrape
// time.
func NewNoProducerCounters(minInterval time.Duration, log logr.Logger) *NoProducerCounters {
	return &NoProducerCounters{Read: readIptablesCounters, MinInterval: minInterval, Now: time.Now, Log: log,
		desc: prometheus.NewDesc("magic_ip_agent_no_producer_connections_total",
			"New connections to a MagicIP port that no local producer took, refused or dropped by its whenNoLocalProducer verdict "+
				"(each TCP SYN and each UDP datagram that would open a flow, IPv4 and IPv6 alike; a dropped SYN the client sends again counts again).",
			[]string{"magicip", "port", "protocol", "action"}, nil),
		readsDesc: prometheus.NewDesc("magic_ip_agent_rule_counter_reads_total",
			"Reads of the kernel's rule counters (one `iptables -v -S` of the verdict chain each, or `ip6tables -v -S` while a MagicIP has an IPv6 address, or one netlink dump of it with nftables), at scrape time and before a rewrite of that chain.", nil, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *NoProducerCounters) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.desc
	ch <- c.readsDesc
}

// Collect implements prometheus.Collector: it reads each source unless it did less than
// MinInterval ago, and none before the agent wrote its rules there.
func (c *NoProducerCounters) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, src := range c.tally.sourceNames() {
		if last := c.tally.sources[src].lastRead; last.IsZero() || c.Now().Sub(last) >= c.MinInterval {
			ctx, cancel := context.WithTimeout(context.Background(), counterReadTimeout)
			c.read(ctx, src)
			cancel()
		}
	}
	for k, v := range c.tally.totals {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, float64(v), k.MagicIP, k.Port, k.Protocol, k.Action)
	}
	ch <- prometheus.MustNewConstMetric(c.readsDesc, prometheus.CounterValue, float64(c.reads))
}

// read folds the counters of source into the tally; a failed read is logged and changes nothing
// (the next scrape tries again).
func (c *NoProducerCounters) read(ctx context.Context, source string) {
	c.reads++
	counts, err := c.Read(ctx, source)
	if err != nil {
		c.Log.Error(err, "reading the rule counters failed: no_producer_connections_total stays as it was", "source", source)
		return
	}
	c.tally.read(source, counts)
	c.tally.sources[source].lastRead = c.Now()
}

// aroundRestore runs restore(ctx, input) for source (the command restoring). When input rewrites
// MAGIC-IP-INPUT it does so within aroundRewrite. A nil c only restores.
func (c *NoProducerCounters) aroundRestore(ctx context.Context, source string, input []byte, restore func(context.Context, []byte) error) error {
	if c == nil {
		return restore(ctx, input)
	}
	written, declared := verdictRules(input)
	if !declared {
		return restore(ctx, input)
	}
	return c.aroundRewrite(ctx, source, func() (map[counterKey]uint64, error) { return written, restore(ctx, input) })
}

// aroundRewrite runs write, which may rewrite the verdict rules of source, and says so by
// returning the rules it wrote (nil: none rewritten; empty: none left). It first reads that
// source's counters (what they hold would otherwise be lost with the rewrite), and once write
// succeeded with rules written, its series become those rules, from 0 in the kernel. Scrapes wait
// meanwhile, so none reads between the rewrite and the new baseline. A failed write leaves the
// rules as they were (one transaction), so the baseline stays. A nil c only writes.
func (c *NoProducerCounters) aroundRewrite(ctx context.Context, source string, write func() (map[counterKey]uint64, error)) error {
	if c == nil {
		_, err := write()
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.tally.sources[source] != nil {
		c.read(ctx, source)
	}
	written, err := write()
	if err != nil {
		return err
	}
	if written != nil {
		c.tally.written(source, written)
	}
	return nil
}

// tally accumulates kernel counters, which restart at 0 whenever their chain is rewritten, into
// counters that only go up; each series sums the rules of its key in every source.
type tally struct {
	// totals holds one series per verdict rule we last wrote in some source: the packets counted
	// since (nil before the first write).
	totals  map[counterKey]uint64
	sources map[string]*source
}

// source is one chain of verdict rules, read and rewritten on its own.
type source struct {
	// base holds each rule we last wrote there, with its kernel counter at the last read (0 right
	// after we wrote it).
	base     map[counterKey]uint64
	lastRead time.Time
}

// sourceNames are the sources holding rules of ours, sorted.
func (t *tally) sourceNames() []string { return slices.Sorted(maps.Keys(t.sources)) }

// written starts a baseline after a rewrite of a source's chain: its rules are those written
// (none: the source is no longer read), every kernel counter there is 0, and it counts as read
// when it was last read (just before the rewrite). The series are the rules
// of every source: those already known keep their totals, the others go.
func (t *tally) written(src string, rules map[counterKey]uint64) {
	if t.sources == nil {
		t.sources = map[string]*source{}
	}
	prev := t.sources[src]
	delete(t.sources, src)
	if len(rules) > 0 {
		s := &source{base: make(map[counterKey]uint64, len(rules))}
		for k := range rules {
			s.base[k] = 0
		}
		if prev != nil {
			s.lastRead = prev.lastRead // the read just before the rewrite
		}
		t.sources[src] = s
	}
	totals := make(map[counterKey]uint64, len(rules))
	for _, s := range t.sources {
		for k := range s.base {
			totals[k] = t.totals[k]
		}
	}
	t.totals = totals
}

// read adds what the kernel counted in source src since the last read or write. A counter found
// lower than its baseline was reset behind our back (a chain flushed by someone else, then
// repaired): all it holds is new. Rules not written by us are ignored.
func (t *tally) read(src string, counts map[counterKey]uint64) {
	s := t.sources[src]
	if s == nil {
		return
	}
	for k, b := range s.base {
		n := counts[k]
		if n >= b {
			t.totals[k] += n - b
		} else {
			t.totals[k] += n
		}
		s.base[k] = n
	}
}
