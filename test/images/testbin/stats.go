package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"
)

// outcome is how one probe attempt ended.
type outcome int

const (
	outcomeOK      outcome = iota // a well-formed answer was read
	outcomeRefused                // ECONNREFUSED: a TCP RST or an ICMP port unreachable
	outcomeTimeout                // no answer within --timeout
	outcomeOther                  // anything else (unreachable, reset, EOF before the line, a malformed line)
)

// classify maps an attempt's error to its outcome (nil is outcomeOK).
func classify(err error) outcome {
	var ne net.Error
	switch {
	case err == nil:
		return outcomeOK
	case errors.Is(err, syscall.ECONNREFUSED):
		return outcomeRefused
	case errors.Is(err, os.ErrDeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return outcomeTimeout
	default:
		return outcomeOther
	}
}

// answerKey returns the first two fields of an echo line, "<pod> <node>".
func answerKey(line string) (string, error) {
	f := strings.Fields(line)
	if len(f) < 2 {
		return "", fmt.Errorf("malformed answer %q (want \"<pod> <node> <peer ip>\")", line)
	}
	return f[0] + " " + f[1], nil
}

// Stats is what GET /stats returns.
type Stats struct {
	Target     string           `json:"target"`
	Proto      string           `json:"proto"`
	Since      time.Time        `json:"since"` // start, or the last POST /reset
	Attempts   int64            `json:"attempts"`
	OK         int64            `json:"ok"`
	Refused    int64            `json:"refused"`
	Timeouts   int64            `json:"timeouts"`
	Errors     int64            `json:"errors"`  // other errors
	Answers    map[string]int64 `json:"answers"` // ok answers by "<pod> <node>"
	LastAnswer string           `json:"lastAnswer"`
	LastError  string           `json:"lastError"`
}

// counters accumulates attempts; safe for concurrent use.
type counters struct {
	mu    sync.Mutex
	stats Stats
}

func newCounters(target, proto string, now time.Time) *counters {
	return &counters{stats: Stats{Target: target, Proto: proto, Since: now, Answers: map[string]int64{}}}
}

// record counts one attempt that read answer (a line) or failed with err.
func (c *counters) record(answer string, err error) {
	var key string
	if err == nil {
		key, err = answerKey(answer)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	s := &c.stats
	s.Attempts++
	switch classify(err) {
	case outcomeOK:
		s.OK++
		s.Answers[key]++
		s.LastAnswer = strings.TrimSpace(answer)
		return
	case outcomeRefused:
		s.Refused++
	case outcomeTimeout:
		s.Timeouts++
	default:
		s.Errors++
	}
	s.LastError = err.Error()
}

// snapshot returns a copy of the counters.
func (c *counters) snapshot() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.stats
	s.Answers = make(map[string]int64, len(c.stats.Answers))
	for k, v := range c.stats.Answers {
		s.Answers[k] = v
	}
	return s
}

// reset zeroes the counters; now becomes Since.
func (c *counters) reset(now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stats = Stats{Target: c.stats.Target, Proto: c.stats.Proto, Since: now, Answers: map[string]int64{}}
}
