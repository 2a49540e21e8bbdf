package latest

import (
	"context"
	"errors"
	"testing"
	"time"
)

// The latest value wins: Sets between two reads give the last one, and wake once.
func TestValueLatestWins(t *testing.T) {
	v := New[int]()
	if _, ok := v.Get(); ok {
		t.Fatal("Get on a new Value reports a value")
	}
	v.Set(1)
	v.Set(2)
	if got, ok := v.Get(); !ok || got != 2 {
		t.Fatalf("Get = %d, %v; want 2, true", got, ok)
	}
	<-v.Wake()
	select {
	case <-v.Wake():
		t.Fatal("two Sets woke twice")
	default:
	}
}

// A failed Reconcile is retried with a doubling delay up to MaxRetry, and told to OnError; a
// success ends the retries.
func TestLoopRetriesWithBackoff(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	calls := make(chan int, 10)
	var delays []time.Duration
	n := 0
	l := Loop{
		Reconcile: func(context.Context) error {
			n++
			calls <- n
			if n <= 3 {
				return errors.New("refused")
			}
			return nil
		},
		OnError:  func(_ error, in time.Duration) { delays = append(delays, in) },
		MinRetry: time.Millisecond, MaxRetry: 3 * time.Millisecond,
	}
	wake := make(chan struct{}, 1)
	wake <- struct{}{}
	done := make(chan struct{})
	go func() { l.Run(ctx, wake); close(done) }()
	for want := 1; want <= 4; want++ {
		select {
		case got := <-calls:
			if got != want {
				t.Fatalf("call %d, want %d", got, want)
			}
		case <-ctx.Done():
			t.Fatalf("Reconcile called %d times, want 4 (three failures retried)", want-1)
		}
	}
	cancel()
	<-done
	want := []time.Duration{time.Millisecond, 2 * time.Millisecond, 3 * time.Millisecond}
	if len(delays) != len(want) {
		t.Fatalf("retry delays %v, want %v", delays, want)
	}
	for i := range want {
		if delays[i] != want[i] {
			t.Fatalf("retry delays %v, want %v", delays, want)
		}
	}
	if len(calls) != 0 {
		t.Fatalf("Reconcile called after a success without a wake")
	}
}

// Wait holds a reconcile off: it runs once Wait says no more time is needed.
func TestLoopWaits(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	waits := 0
	reconciled := make(chan int, 1)
	l := Loop{
		Reconcile: func(context.Context) error { reconciled <- waits; return nil },
		Wait: func() time.Duration {
			waits++
			if waits < 3 {
				return time.Millisecond
			}
			return 0
		},
		MinRetry: time.Millisecond, MaxRetry: time.Millisecond,
	}
	wake := make(chan struct{}, 1)
	wake <- struct{}{}
	go l.Run(ctx, wake)
	select {
	case w := <-reconciled:
		if w != 3 {
			t.Fatalf("reconciled after %d Wait calls, want 3", w)
		}
	case <-ctx.Done():
		t.Fatal("never reconciled")
	}
}
