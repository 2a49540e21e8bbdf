package version

import (
	"runtime"
	"strings"
	"testing"
)

func TestStringDefaults(t *testing.T) {
	s := String()
	for _, want := range []string{"dev", "commit unknown", "built unknown", runtime.Version()} {
		if !strings.Contains(s, want) {
			t.Errorf("String() = %q, want it to contain %q", s, want)
		}
	}
}
