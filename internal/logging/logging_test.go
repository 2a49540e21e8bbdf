package logging

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"k8s.io/klog/v2"
)

// TestNew: JSON lines, V(n) shown up to the verbosity and not beyond, errors under "err",
// client-go's klog lines in the same stream.
func TestNew(t *testing.T) {
	tests := map[string]struct {
		verbosity int
		want      []string // messages expected, in order
	}{
		"default shows V(0) and errors": {0, []string{"info", "error", "klog info"}},
		"-v 2 shows V(1), V(2)":         {2, []string{"info", "v1", "v2", "error", "klog info"}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			var buf bytes.Buffer
			log := New(&buf, tc.verbosity)
			defer klog.ClearLogger()
			log.Info("info", "k", "v")
			log.V(1).Info("v1")
			log.V(2).Info("v2")
			log.V(3).Info("v3")
			log.Error(errors.New("boom"), "error")
			klog.InfoS("klog info")
			var got []string
			for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
				var rec map[string]any
				if err := json.Unmarshal([]byte(line), &rec); err != nil {
					t.Fatalf("not a JSON line: %q", line)
				}
				got = append(got, rec["msg"].(string))
				if rec["msg"] == "error" && rec["err"] != "boom" {
					t.Errorf("error line %v: want err=boom", rec)
				}
				if rec["msg"] == "info" && rec["k"] != "v" {
					t.Errorf("info line %v: want k=v", rec)
				}
			}
			if strings.Join(got, ",") != strings.Join(tc.want, ",") {
				t.Errorf("messages %q, want %q", got, tc.want)
			}
		})
	}
}
