// Package latest runs a reporter's writes: Set records the latest value (intermediate ones are
// skipped), and Loop reconciles it one write at a time, when woken, retrying a failure with
// doubling backoff, and no sooner than a gap the caller asks for.
package latest

import (
	"context"
	"sync"
	"time"
)

// Value holds the latest value set and wakes whoever waits on it.
type Value[T any] struct {
	mu   sync.Mutex
	v    T
	set  bool
	wake chan struct{}
}

// New returns an empty Value.
func New[T any]() *Value[T] { return &Value[T]{wake: make(chan struct{}, 1)} }

// Set records v as the latest value. It never blocks.
func (l *Value[T]) Set(v T) {
	l.mu.Lock()
	l.v, l.set = v, true
	l.mu.Unlock()
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

// Get returns the latest value and whether one was set.
func (l *Value[T]) Get() (T, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.v, l.set
}

// Wake receives after each Set (several Sets may give one receive).
func (l *Value[T]) Wake() <-chan struct{} { return l.wake }

// Loop reconciles after each wake until its context ends.
type Loop struct {
	// Reconcile brings the world in line with the latest value.
	Reconcile func(ctx context.Context) error
	// OnError is told of a failed Reconcile and when it is retried.
	OnError func(err error, retryIn time.Duration)
	// Wait, when set, returns how long to hold off before reconciling (e.g. a least gap between
	// two writes); the loop reconciles after that.
	Wait func() time.Duration
	// MinRetry and MaxRetry bound the doubling delay between retries of a failed Reconcile.
	MinRetry, MaxRetry time.Duration
}

// Run reconciles on each receive from wake, and again after a failure, until ctx ends.
func (l Loop) Run(ctx context.Context, wake <-chan struct{}) {
	delay := l.MinRetry
	var timer <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-wake:
		case <-timer:
		}
		if l.Wait != nil {
			if wait := l.Wait(); wait > 0 {
				timer = time.After(wait)
				continue
			}
		}
		timer = nil
		if err := l.Reconcile(ctx); err != nil {
			if ctx.Err() != nil {
				return
			}
			l.OnError(err, delay)
			timer = time.After(delay)
			delay = min(2*delay, l.MaxRetry)
			continue
		}
		delay = l.MinRetry
	}
}
