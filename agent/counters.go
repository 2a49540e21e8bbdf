package agent

import (
	"context"
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
// counters of the verdict rules (one per port, matching only the first packet of a connection:
// in MAGIC-IP-INPUT with iptables, in chain input of table inet magic-ip with nftables). They are
// read at scrape time, at most once per MinInterval, and just before a write that rewrites that
// chain (which sets its counters back to 0); the collector adds up what each read found since the
// previous one, so its counters only go up. The series are those of the rules last written: a
// MagicIP or port that goes away takes its series along.
type NoProducerCounters struct {
	// Read lists the verdict rules' packet counters (iptables: readIptablesCounters; nftables:
	// the datapath's netlink read).
	Read func(context.Context) (map[counterKey]uint64, error)
	// MinInterval: scrapes read the kernel at most this often (0: at every scrape).
	MinInterval time.Duration
	Now         func() time.Time
	Log         logr.Logger

	desc, readsDesc *prometheus.Desc

	mu       sync.Mutex
	tally    tally
	lastRead time.Time
	reads    uint64
}

// NewNoProducerCounters reads the node's kernel counters at most once per minInterval at scrape
// time.
func NewNoProducerCounters(minInterval time.Duration, log logr.Logger) *NoProducerCounters {
	return &NoProducerCounters{Read: readIptablesCounters, MinInterval: minInterval, Now: time.Now, Log: log,
		desc: prometheus.NewDesc("magic_ip_agent_no_producer_connections_total",
			"New connections to a MagicIP port that no local producer took, refused or dropped by its whenNoLocalProducer verdict "+
				"(each TCP SYN and each UDP datagram that would open a flow; a dropped SYN the client sends again counts again).",
			[]string{"magicip", "port", "protocol", "action"}, nil),
		readsDesc: prometheus.NewDesc("magic_ip_agent_rule_counter_reads_total",
			"Reads of the kernel's rule counters (one `iptables -v -S` of the verdict chain each, or one netlink dump of it with nftables), at scrape time and before a rewrite of that chain.", nil, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *NoProducerCounters) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.desc
	ch <- c.readsDesc
}

// Collect implements prometheus.Collector: it reads the kernel unless it did less than
// MinInterval ago, and nothing before the agent wrote its rules.
func (c *NoProducerCounters) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.tally.known() && (c.lastRead.IsZero() || c.Now().Sub(c.lastRead) >= c.MinInterval) {
		ctx, cancel := context.WithTimeout(context.Background(), counterReadTimeout)
		c.read(ctx)
		cancel()
	}
	for k, v := range c.tally.totals {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, float64(v), k.MagicIP, k.Port, k.Protocol, k.Action)
	}
	ch <- prometheus.MustNewConstMetric(c.readsDesc, prometheus.CounterValue, float64(c.reads))
}

// read folds the kernel's counters into the tally; a failed read is logged and changes nothing
// (the next scrape tries again).
func (c *NoProducerCounters) read(ctx context.Context) {
	c.reads++
	counts, err := c.Read(ctx)
	if err != nil {
		c.Log.Error(err, "reading the rule counters failed: no_producer_connections_total stays as it was")
		return
	}
	c.tally.read(counts)
	c.lastRead = c.Now()
}

// aroundRestore runs restore(ctx, input). When input rewrites MAGIC-IP-INPUT it does so within
// aroundRewrite. A nil c only restores.
func (c *NoProducerCounters) aroundRestore(ctx context.Context, input []byte, restore func(context.Context, []byte) error) error {
	if c == nil {
		return restore(ctx, input)
	}
	written, declared := verdictRules(input)
	if !declared {
		return restore(ctx, input)
	}
	return c.aroundRewrite(ctx, func() (map[counterKey]uint64, error) { return written, restore(ctx, input) })
}

// aroundRewrite runs write, which may rewrite the verdict rules, and says so by returning the
// rules it wrote (nil: none rewritten). It first reads the counters (what they hold would
// otherwise be lost with the rewrite), and once write succeeded with rules written, the series
// become those rules, from 0 in the kernel. Scrapes wait meanwhile, so none reads between the
// rewrite and the new baseline. A failed write leaves the rules as they were (one transaction),
// so the baseline stays.
func (c *NoProducerCounters) aroundRewrite(ctx context.Context, write func() (map[counterKey]uint64, error)) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.tally.known() {
		c.read(ctx)
	}
	written, err := write()
	if err != nil {
		return err
	}
	if written != nil {
		c.tally.written(written)
	}
	return nil
}

// tally accumulates kernel counters, which restart at 0 whenever their chain is rewritten, into
// counters that only go up.
type tally struct {
	// totals holds one series per verdict rule we last wrote: the packets counted since.
	totals map[counterKey]uint64
	// base is each rule's kernel counter at the last read (0 right after we wrote it).
	base map[counterKey]uint64
}

// known reports whether a write set the series (before it, there is nothing to count).
func (t *tally) known() bool { return t.totals != nil }

// written starts a baseline after a rewrite of the chain: the series are the rules written (those
// already known keep their totals, the others go), every kernel counter is 0.
func (t *tally) written(rules map[counterKey]uint64) {
	totals := make(map[counterKey]uint64, len(rules))
	for k := range rules {
		totals[k] = t.totals[k]
	}
	t.totals, t.base = totals, map[counterKey]uint64{}
}

// read adds what the kernel counted since the last read or write. A counter found lower than its
// baseline was reset behind our back (a chain flushed by someone else, then repaired): all it
// holds is new. Rules not written by us are ignored.
func (t *tally) read(counts map[counterKey]uint64) {
	base := make(map[counterKey]uint64, len(t.totals))
	for k := range t.totals {
		n := counts[k]
		if n >= t.base[k] {
			t.totals[k] += n - t.base[k]
		} else {
			t.totals[k] += n
		}
		base[k] = n
	}
	t.base = base
}
