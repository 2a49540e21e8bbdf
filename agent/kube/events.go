package kube

import (
	"context"
	"time"
	"unicode/utf8"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"

	"github.com/magic-ip/magic-ip/api/v1alpha1"
)

const (
	// ReportingController is the events' reportingController.
	ReportingController = "magic-ip-agent"
	// noteLimit is the API server's limit on an event's note, in bytes.
	noteLimit = 1024
	// pendingEvents bounds the events waiting to be posted; beyond it new ones are dropped.
	pendingEvents = 64
	postTimeout   = 10 * time.Second
)

// Recorder posts events.k8s.io/v1 Events about MagicIPs. Warning only queues: Run posts the
// events one at a time, so a slow API server never holds up a sync. A failed post is logged and
// dropped (the agent reports a problem again only when it changes).
type Recorder struct {
	client   rest.Interface
	instance string
	log      logr.Logger
	queue    chan *eventsv1.Event
}

// NewRecorder returns a Recorder reporting as the agent of node.
func NewRecorder(c rest.Interface, node string, log logr.Logger) *Recorder {
	return &Recorder{client: c, instance: Truncate(ReportingController+"-"+node, 128), log: log, queue: make(chan *eventsv1.Event, pendingEvents)}
}

// Warning queues a Warning event about m.
func (r *Recorder) Warning(m *v1alpha1.MagicIP, reason, note string) {
	select {
	case r.queue <- WarningEvent(m, reason, note, r.instance, time.Now()):
	default:
		r.log.Info("event dropped: too many waiting to be posted", "magicIP", m.Name, "reason", reason)
	}
}

// Run posts queued events until ctx ends.
func (r *Recorder) Run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case ev := <-r.queue:
			if err := r.post(ctx, ev); err != nil {
				r.log.Error(err, "could not post event", "magicIP", ev.Regarding.Name, "reason", ev.Reason)
			} else {
				r.log.V(4).Info("posted event", "magicIP", ev.Regarding.Name, "reason", ev.Reason)
			}
		}
	}
}

func (r *Recorder) post(ctx context.Context, ev *eventsv1.Event) error {
	ctx, cancel := context.WithTimeout(ctx, postTimeout)
	defer cancel()
	return r.client.Post().Namespace(ev.Namespace).Resource("events").Body(ev).Do(ctx).Error()
}

// WarningEvent is the Event a Recorder posts about m. MagicIPs are cluster-scoped, so it goes to
// the default namespace, as client-go's recorders do. The API server completes the name from
// generateName ("<magicip>-" is a valid prefix; a trailing "." is not).
func WarningEvent(m *v1alpha1.MagicIP, reason, note, instance string, now time.Time) *eventsv1.Event {
	return &eventsv1.Event{
		ObjectMeta: metav1.ObjectMeta{GenerateName: m.Name + "-", Namespace: metav1.NamespaceDefault},
		EventTime:  metav1.NewMicroTime(now),
		Type:       corev1.EventTypeWarning,
		Reason:     reason,
		Action:     "Program",
		Note:       Truncate(note, noteLimit),
		Regarding: corev1.ObjectReference{
			APIVersion: v1alpha1.GroupVersion.String(), Kind: "MagicIP",
			Name: m.Name, UID: m.UID, ResourceVersion: m.ResourceVersion,
		},
		ReportingController: ReportingController,
		ReportingInstance:   instance,
	}
}

// Truncate shortens s to at most n bytes without splitting a character.
func Truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}
