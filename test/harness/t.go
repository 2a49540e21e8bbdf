package harness

import "context"

// T is what the harness needs from a test: *testing.T and *testing.B satisfy it, and so can a
// program such as the demo that runs the harness outside `go test`.
type T interface {
	Helper()
	Fatal(args ...any)
	Fatalf(format string, args ...any)
	Errorf(format string, args ...any)
	Logf(format string, args ...any)
	Skip(args ...any)
	Cleanup(func())
	Context() context.Context
	Name() string
	Failed() bool
	TempDir() string
}
