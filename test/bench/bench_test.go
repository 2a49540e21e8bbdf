// Package bench measures magic-ip on the real harness (kube-apiserver + etcd, network-namespace
// nodes, real iptables) and prints the figures with their targets. Run it with `make bench`
// (`make bench QUICK=1` for a short run). Nothing here asserts a figure: these are measurements.
package bench

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/magic-ip/magic-ip/test/harness"
)

var (
	quick  = flag.Bool("quick", false, "few trials: checks the benchmarks run, figures are rough")
	outDir = flag.String("out", "", "directory for results.md and results.json (default: print only)")
)

// agentBin is the magic-ip-agent binary under measurement.
var agentBin string

// row is one measured figure next to its target.
type row struct {
	Scenario string  `json:"scenario"`
	Figure   string  `json:"figure"`
	Value    float64 `json:"value"`
	Unit     string  `json:"unit"`
	Target   string  `json:"target,omitempty"`
	Pass     *bool   `json:"pass,omitempty"`
}

// results collects rows from all benchmarks; written once at the end.
type results struct {
	mu   sync.Mutex
	rows []row
}

var collected results

func record(r row) {
	collected.mu.Lock()
	defer collected.mu.Unlock()
	collected.rows = append(collected.rows, r)
}

// goal records a figure with a target: pass when ok.
func goal(scenario, figure string, value float64, unit, target string, ok bool) {
	record(goalRow(scenario, figure, value, unit, target, ok))
}

// goalRow is a row with a target, as goal records it.
func goalRow(scenario, figure string, value float64, unit, target string, ok bool) row {
	return row{Scenario: scenario, Figure: figure, Value: value, Unit: unit, Target: target, Pass: &ok}
}

func TestMain(m *testing.M) {
	flag.Parse()
	dir, err := os.MkdirTemp("", "magic-ip-bench-bin-")
	if err == nil {
		agentBin, err = harness.Build(dir, "./cmd/magic-ip-agent")
	}
	if err == nil {
		webhookBin, err = harness.Build(dir, "./cmd/magic-ip-webhook")
	}
	if err == nil {
		noopBin, err = harness.Build(dir, "./test/bench/noopwebhook")
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "build:", err)
		os.Exit(1)
	}
	code := harness.Main(m)
	os.RemoveAll(dir)
	if err := report(); err != nil {
		fmt.Fprintln(os.Stderr, "report:", err)
		code = 1
	}
	os.Exit(code)
}

func report() error {
	if len(collected.rows) == 0 {
		return nil
	}
	var b strings.Builder
	host, _ := os.Hostname()
	fmt.Fprintf(&b, "\n## magic-ip benchmarks — %s, %s, quick=%v\n\n", time.Now().UTC().Format("2006-01-02 15:04 UTC"), host, *quick)
	b.WriteString("| scenario | figure | value | target | |\n|---|---|---|---|---|\n")
	for _, r := range collected.rows {
		mark := ""
		if r.Pass != nil {
			mark = map[bool]string{true: "pass", false: "MISS"}[*r.Pass]
		}
		fmt.Fprintf(&b, "| %s | %s | %s %s | %s | %s |\n", r.Scenario, r.Figure, trim(r.Value), r.Unit, r.Target, mark)
	}
	fmt.Print(b.String())
	if *outDir == "" {
		return nil
	}
	if err := os.MkdirAll(*outDir, 0o755); err != nil {
		return err
	}
	js, err := json.MarshalIndent(collected.rows, "", "  ")
	if err != nil {
		return err
	}
	return errorsJoin(os.WriteFile(filepath.Join(*outDir, "results.md"), []byte(b.String()), 0o644),
		os.WriteFile(filepath.Join(*outDir, "results.json"), js, 0o644))
}

func errorsJoin(errs ...error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}

func trim(v float64) string {
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 1:
		return fmt.Sprintf("%.2f", v)
	default:
		return fmt.Sprintf("%.3f", v)
	}
}

// percentile of durations in milliseconds (nearest rank).
func percentile(ds []time.Duration, p float64) float64 {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(p/100*float64(len(s))+0.999999) - 1
	i = max(0, min(i, len(s)-1))
	return float64(s[i]) / float64(time.Millisecond)
}

func mean(ds []time.Duration) float64 {
	var sum time.Duration
	for _, d := range ds {
		sum += d
	}
	return float64(sum) / float64(len(ds)) / float64(time.Millisecond)
}

func trials(full, short int) int {
	if *quick {
		return short
	}
	return full
}
