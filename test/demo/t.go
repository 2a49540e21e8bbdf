package main

import (
	"context"
	"errors"
	"fmt"
	"os"
)

// demoT lets the demo use the test harness outside `go test`: cleanups run last-in first-out at
// the end (also after Ctrl-C), and a fatal harness error ends the show with a message.
type demoT struct {
	ctx      context.Context
	cleanups []func()
	errs     []error
	failed   bool // the show failed: cleanups print what the processes logged
}

func newDemoT(ctx context.Context) *demoT { return &demoT{ctx: ctx} }

// fatal unwinds the show to run: the harness called Fatal.
type fatal struct{ msg string }

func (t *demoT) run(show func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			f, ok := r.(fatal)
			if !ok {
				panic(r)
			}
			err = errors.New(f.msg)
			t.failed = true
		}
	}()
	if err = show(); err != nil {
		t.failed = true
	}
	return err
}

func (t *demoT) cleanup() error {
	for i := len(t.cleanups) - 1; i >= 0; i-- {
		t.cleanups[i]()
	}
	t.cleanups = nil
	return errors.Join(t.errs...)
}

func (t *demoT) Helper()                           {}
func (t *demoT) Fatal(args ...any)                 { panic(fatal{fmt.Sprint(args...)}) }
func (t *demoT) Fatalf(format string, args ...any) { panic(fatal{fmt.Sprintf(format, args...)}) }
func (t *demoT) Skip(args ...any)                  { panic(fatal{fmt.Sprint(args...)}) }
func (t *demoT) Errorf(format string, args ...any) {
	t.errs = append(t.errs, fmt.Errorf(format, args...))
}
func (t *demoT) Logf(format string, args ...any) { fmt.Fprintf(os.Stderr, format+"\n", args...) }
func (t *demoT) Cleanup(f func())                { t.cleanups = append(t.cleanups, f) }
func (t *demoT) Context() context.Context        { return t.ctx }
func (t *demoT) Name() string                    { return "demo" }
func (t *demoT) Failed() bool                    { return t.failed || len(t.errs) > 0 }

func (t *demoT) TempDir() string {
	dir, err := os.MkdirTemp("", "magic-ip-demo-")
	if err != nil {
		t.Fatalf("temp dir: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}
