package kube

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apivalidation "k8s.io/apimachinery/pkg/api/validation"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"

	"github.com/magic-ip/magic-ip/api/v1alpha1"
)

func TestWarningEvent(t *testing.T) {
	now := time.Date(2026, 11, 23, 10, 0, 0, 123456000, time.UTC)
	m := &v1alpha1.MagicIP{ObjectMeta: metav1.ObjectMeta{Name: "datadog-rival", UID: "u-1", ResourceVersion: "42"}}
	long := strings.Repeat("x", 1023) + "é" // 1025 bytes: the é would be split at 1024
	for name, tc := range map[string]struct {
		reason, note string
		wantNote     string
	}{
		"conflict": {"Conflict", "169.254.210.210:8126/TCP is already claimed by MagicIP datadog", "169.254.210.210:8126/TCP is already claimed by MagicIP datadog"},
		"long note is cut at a character boundary within the API's 1024 bytes": {"Invalid", long, strings.Repeat("x", 1023)},
	} {
		t.Run(name, func(t *testing.T) {
			got := WarningEvent(m, tc.reason, tc.note, "magic-ip-agent-node-1", now)
			want := &eventsv1.Event{
				ObjectMeta: metav1.ObjectMeta{GenerateName: "datadog-rival-", Namespace: "default"},
				EventTime:  metav1.MicroTime{Time: now},
				Type:       "Warning", Reason: tc.reason, Action: "Program", Note: tc.wantNote,
				Regarding: corev1.ObjectReference{
					APIVersion: "magic-ip.dev/v1alpha1", Kind: "MagicIP", Name: "datadog-rival", UID: "u-1", ResourceVersion: "42",
				},
				ReportingController: "magic-ip-agent", ReportingInstance: "magic-ip-agent-node-1",
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("WarningEvent:\n got %+v\nwant %+v", got, want)
			}
		})
	}
}

// TestWarningEventNameValid: the API server validates generateName as a DNS subdomain prefix
// (it refused "<name>." with 422).
func TestWarningEventNameValid(t *testing.T) {
	for _, name := range []string{"datadog", "apm.example", strings.Repeat("a", 253)} {
		ev := WarningEvent(&v1alpha1.MagicIP{ObjectMeta: metav1.ObjectMeta{Name: name}}, "Invalid", "n", "i", time.Now())
		if errs := apivalidation.NameIsDNSSubdomain(ev.GenerateName, true); len(errs) > 0 {
			t.Errorf("generateName %q: %v", ev.GenerateName, errs)
		}
	}
}

func TestTruncate(t *testing.T) {
	for _, tc := range []struct {
		s    string
		n    int
		want string
	}{
		{"abc", 3, "abc"},
		{"abcd", 3, "abc"},
		{"aé", 2, "a"}, // é is 2 bytes
		{"aé", 3, "aé"},
		{"日本", 4, "日"}, // 3 bytes each
		{"日本", 2, ""},
	} {
		if got := Truncate(tc.s, tc.n); got != tc.want {
			t.Errorf("Truncate(%q, %d) = %q, want %q", tc.s, tc.n, got, tc.want)
		}
	}
}

// TestRecorderPosts runs a Recorder against a stand-in API server: events are POSTed as
// events.k8s.io/v1 JSON to the default namespace, one at a time; a refused post is logged and the
// next one still goes out.
func TestRecorderPosts(t *testing.T) {
	type post struct {
		path string
		ev   eventsv1.Event
	}
	posts := make(chan post, 2)
	var accept atomic.Bool // the first post is refused
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		p := post{path: r.Method + " " + r.URL.Path}
		if err := json.Unmarshal(b, &p.ev); err != nil {
			t.Errorf("body %q: %v", b, err)
		}
		posts <- p
		w.Header().Set("Content-Type", "application/json")
		if !accept.Swap(true) {
			w.WriteHeader(http.StatusForbidden)
			_, _ = io.WriteString(w, `{"kind":"Status","apiVersion":"v1","status":"Failure","message":"events.events.k8s.io is forbidden","reason":"Forbidden","code":403}`)
			return
		}
		w.WriteHeader(http.StatusCreated)
		_, _ = w.Write(b)
	}))
	defer srv.Close()
	cs, err := NewClients(&rest.Config{Host: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	logged := make(chan string, 4)
	r := NewRecorder(cs.Events, "node-1", logr.New(chanSink(logged)))
	m := &v1alpha1.MagicIP{ObjectMeta: metav1.ObjectMeta{Name: "apm", UID: "u-2"}}
	r.Warning(m, "InterfaceUnavailable", "first")
	r.Warning(m, "InterfaceUnavailable", "second")
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	if got := <-logged; !strings.HasPrefix(got, "could not post event: ") || !strings.Contains(got, "forbidden") {
		t.Errorf("first log line %q, want the refused post with the API server's reason", got)
	}
	if got := <-logged; got != "posted event" {
		t.Errorf("second log line %q, want \"posted event\"", got)
	}
	cancel()
	<-done
	for i, want := range []string{"first", "second"} {
		p := <-posts
		if p.path != "POST /apis/events.k8s.io/v1/namespaces/default/events" {
			t.Errorf("post %d: %s", i, p.path)
		}
		if p.ev.APIVersion != "events.k8s.io/v1" || p.ev.Kind != "Event" || p.ev.Regarding.Name != "apm" ||
			p.ev.ReportingInstance != "magic-ip-agent-node-1" || p.ev.Note != want {
			t.Errorf("post %d: %+v", i, p.ev)
		}
	}
}

// chanSink sends each log line's message (errors as "message: error") to a channel.
type chanSink chan<- string

func (chanSink) Init(logr.RuntimeInfo)                   {}
func (chanSink) Enabled(int) bool                        { return true }
func (s chanSink) Info(_ int, msg string, _ ...any)      { s <- msg }
func (s chanSink) Error(err error, msg string, _ ...any) { s <- msg + ": " + err.Error() }
func (s chanSink) WithValues(...any) logr.LogSink        { return s }
func (s chanSink) WithName(string) logr.LogSink          { return s }
