package agent

import (
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the agent's Prometheus metrics. Create them with NewMetrics and register them once.
type Metrics struct {
	SyncDuration   prometheus.Histogram
	SyncErrors     prometheus.Counter
	SyncFailing    prometheus.Gauge
	LastSuccess    prometheus.Gauge
	IptablesExecs  prometheus.Counter
	RuleWrites     prometheus.Counter
	EventToApplied prometheus.Histogram
	DriftRepairs   prometheus.Counter
	Producers      *prometheus.GaugeVec
	Problems       *prometheus.GaugeVec
	DatapathInfo   *prometheus.GaugeVec
	FlushDuration  prometheus.Histogram
	FlushedEntries prometheus.Counter
	FlushErrors    prometheus.Counter
}

// NewMetrics creates the metrics (unregistered).
func NewMetrics() *Metrics {
	buckets := []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5}
	return &Metrics{
		SyncDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "magic_ip_agent_sync_duration_seconds", Help: "Time to apply the desired state to the node.", Buckets: buckets}),
		SyncErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "magic_ip_agent_sync_errors_total", Help: "Syncs that failed (they are retried with backoff)."}),
		SyncFailing: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "magic_ip_agent_sync_failing", Help: "1 while the last sync failed (the node may lag behind the API), else 0."}),
		LastSuccess: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "magic_ip_agent_last_successful_sync_timestamp_seconds", Help: "Unix time of the last sync that succeeded (0: none yet)."}),
		IptablesExecs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "magic_ip_agent_iptables_execs_total", Help: "iptables-save and iptables-restore processes run (ip6tables ones included)."}),
		RuleWrites: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "magic_ip_agent_rule_writes_total", Help: "Syncs that wrote rules (iptables-restore); a sync with nothing changed writes nothing."}),
		EventToApplied: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "magic_ip_agent_event_to_applied_seconds", Help: "From a pod or MagicIP change being observed to the rules that reflect it being applied.", Buckets: buckets}),
		DriftRepairs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "magic_ip_agent_drift_repairs_total", Help: "Full syncs that found our rules changed behind our back and restored them."}),
		Producers: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "magic_ip_agent_programmed_producers", Help: "Local producers programmed per MagicIP and port."}, []string{"magicip", "port"}),
		Problems: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "magic_ip_agent_magicip_problems", Help: "1 when a MagicIP is not served on this node, by reason (Conflict, Invalid, InterfaceUnavailable)."}, []string{"magicip", "reason"}),
		DatapathInfo: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "magic_ip_agent_datapath_info", Help: "1 for the datapath in use and why it was chosen (reason: flag, kube-proxy-nftables, iptables-unusable, iptables-hint, no-hint)."}, []string{"datapath", "reason"}),
		FlushDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "magic_ip_agent_conntrack_flush_duration_seconds", Help: "Time of one background deletion of stale UDP conntrack entries (a walk of the kernel's whole conntrack table), after the sync that made them stale.", Buckets: buckets}),
		FlushedEntries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "magic_ip_agent_conntrack_entries_flushed_total", Help: "UDP conntrack entries deleted because their producer or service went away."}),
		FlushErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "magic_ip_agent_conntrack_flush_errors_total", Help: "Background conntrack flushes that failed (logged; the flows keep their producer until they idle out)."}),
	}
}

// Register adds the metrics to reg.
func (m *Metrics) Register(reg prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{m.SyncDuration, m.SyncErrors, m.SyncFailing, m.LastSuccess, m.IptablesExecs, m.RuleWrites, m.EventToApplied, m.DriftRepairs, m.Producers, m.Problems, m.DatapathInfo, m.FlushDuration, m.FlushedEntries, m.FlushErrors} {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

// setDatapath records the datapath chosen at start-up.
func (m *Metrics) setDatapath(c DatapathChoice) {
	m.DatapathInfo.Reset()
	m.DatapathInfo.WithLabelValues(c.Datapath, c.Reason).Set(1)
}

// observeFlush records a background conntrack flush (Syncer.OnFlush).
func (m *Metrics) observeFlush(r FlushResult) {
	m.FlushDuration.Observe(r.Took.Seconds())
	m.FlushedEntries.Add(float64(r.Deleted))
	if r.Err != nil {
		m.FlushErrors.Inc()
	}
}

func (m *Metrics) observeSync(d time.Duration, execs int64, wrote bool) {
	m.SyncDuration.Observe(d.Seconds())
	m.IptablesExecs.Add(float64(execs))
	if wrote {
		m.RuleWrites.Inc()
	}
}

func (m *Metrics) setFailing(failing bool, now time.Time) {
	if failing {
		m.SyncFailing.Set(1)
		return
	}
	m.SyncFailing.Set(0)
	m.LastSuccess.Set(float64(now.UnixNano()) / 1e9)
}

func (m *Metrics) setProducers(st State) {
	m.Producers.Reset()
	for _, s := range st.Services {
		m.Producers.WithLabelValues(s.MagicIP, s.PortName).Set(float64(len(s.Endpoints)))
	}
}

func (m *Metrics) setProblems(problems map[string]string) {
	m.Problems.Reset()
	for name, p := range problems {
		reason, _, _ := strings.Cut(p, "|")
		m.Problems.WithLabelValues(name, reason).Set(1)
	}
}
