package webhook

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/magic-ip/magic-ip/api/v1alpha1"
)

// ConditionProducerNamespace is True when the producer namespace exists.
const ConditionProducerNamespace = "ProducerNamespaceFound"

// StatusReconciler keeps every MagicIP's conditions (Accepted, Conflict, InjectionConflict,
// ProducerNamespaceFound, and IPv6Programmed on dual-stack ones), observedGeneration and
// portSummary true. Everything is decided by
// Resolve, which the webhook injects by: address claims by v1alpha1.ResolveClaims (the function
// the agents use), the address family by the rule the agents apply, variable
// names and hostnames by age. So status, datapath and injection agree. One work item covers all
// MagicIPs: a change to one can change who wins for the others.
type StatusReconciler struct {
	Client client.Client
	Log    logr.Logger
	// NodeCountsInterval is the least time between two status writes of one MagicIP that change
	// only its node counts (status.nodes, from the agents' MagicIPNode records); other changes are
	// written at once. DefaultNodeCountsInterval when 0.
	NodeCountsInterval time.Duration

	throttle countsThrottle
}

var allRequest = reconcile.Request{NamespacedName: types.NamespacedName{Name: "all"}}

// SetupWithManager watches MagicIPs, the agents' MagicIPNode records and namespaces (their metadata
// only: whether a namespace exists is all it reads). It runs only on the elected leader.
func (r *StatusReconciler) SetupWithManager(mgr ctrl.Manager) error {
	all := handler.EnqueueRequestsFromMapFunc(func(context.Context, client.Object) []reconcile.Request {
		return []reconcile.Request{allRequest}
	})
	return ctrl.NewControllerManagedBy(mgr).
		Named("magicip-status").
		Watches(&v1alpha1.MagicIP{}, all).
		Watches(&v1alpha1.MagicIPNode{}, all).
		WatchesMetadata(&corev1.Namespace{}, all).
		Complete(r)
}

// Reconcile recomputes the status of every MagicIP and writes those that changed.
func (r *StatusReconciler) Reconcile(ctx context.Context, _ reconcile.Request) (reconcile.Result, error) {
	var list v1alpha1.MagicIPList
	if err := r.Client.List(ctx, &list); err != nil {
		return reconcile.Result{}, fmt.Errorf("list MagicIPs: %w", err)
	}
	var namespaces metav1.PartialObjectMetadataList
	namespaces.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("NamespaceList"))
	if err := r.Client.List(ctx, &namespaces); err != nil {
		return reconcile.Result{}, fmt.Errorf("list namespaces: %w", err)
	}
	exists := map[string]bool{}
	for _, ns := range namespaces.Items {
		exists[ns.Name] = ns.DeletionTimestamp == nil
	}
	var records v1alpha1.MagicIPNodeList
	if err := r.Client.List(ctx, &records); err != nil {
		return reconcile.Result{}, fmt.Errorf("list MagicIPNodes: %w", err)
	}
	counts := NodeCounts(records.Items)
	v6 := IPv6Reports(list.Items, records.Items)
	res := Resolve(list.Items)
	r.throttle.interval = cmp.Or(r.NodeCountsInterval, DefaultNodeCountsInterval)
	var errs []error
	var later time.Duration
	for i := range list.Items {
		m := &list.Items[i]
		want := m.Status.DeepCopy()
		DesiredStatus(want, m, res, exists[m.Spec.Producer.Namespace])
		SetIPv6Condition(want, m, v6[m.Name])
		c := counts[m.Name]
		want.Nodes = &c
		if equality.Semantic.DeepEqual(*want, m.Status) {
			continue
		}
		now := time.Now()
		if wait := r.throttle.wait(m.Name, &m.Status, want, now); wait > 0 {
			later = minPositive(later, wait)
			continue
		}
		m.Status = *want
		if err := r.Client.Status().Update(ctx, m); err != nil {
			errs = append(errs, fmt.Errorf("update status of MagicIP %s: %w", m.Name, err))
			continue
		}
		r.throttle.wrote(m.Name, now)
		r.Log.V(2).Info("status updated", "magicIP", m.Name, "accepted", meta.IsStatusConditionTrue(m.Status.Conditions, v1alpha1.ConditionAccepted),
			"programmed", c.Programmed, "localProducers", c.LocalProducers, "failing", c.Failing)
	}
	return reconcile.Result{RequeueAfter: later}, errors.Join(errs...)
}

func minPositive(a, b time.Duration) time.Duration {
	if a <= 0 {
		return b
	}
	return min(a, b)
}

// DesiredStatus sets the conditions of m into st (keeping transition times of unchanged ones), from
// the resolution of all MagicIPs.
func DesiredStatus(st *v1alpha1.MagicIPStatus, m *v1alpha1.MagicIP, res Resolution, nsExists bool) {
	gen := m.Generation
	set := func(t string, ok bool, reason, msg string) {
		s := metav1.ConditionFalse
		if ok {
			s = metav1.ConditionTrue
		}
		meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: t, Status: s, Reason: reason, Message: msg, ObservedGeneration: gen})
	}
	c, lost := res.Claims[m.Name]
	err, refused := res.Unprogrammable[m.Name]
	if lost {
		msg := fmt.Sprintf("%s is already claimed by MagicIP %s (the older claim wins); this MagicIP is neither programmed nor injected", c.Claim, c.Winner)
		set(v1alpha1.ConditionAccepted, false, "Conflict", msg)
		set(v1alpha1.ConditionConflict, true, "ClaimTaken", msg)
	} else {
		set(v1alpha1.ConditionConflict, false, "NoConflict", "no older MagicIP claims the same address, port and protocol")
		if refused {
			reason := "InvalidAddress"
			if errors.Is(err, v1alpha1.ErrAddressFamilyNotSupported) {
				reason = v1alpha1.ReasonAddressFamilyNotSupported
			}
			set(v1alpha1.ConditionAccepted, false, reason, err.Error()+"; this MagicIP is neither programmed nor injected")
		} else {
			claims := make([]string, 0, len(m.Spec.Ports))
			for _, c := range m.Claims() {
				claims = append(claims, c.String())
			}
			msg := "owns " + strings.Join(claims, ", ")
			if m.Spec.IPv6Address != "" {
				msg += "; where the IPv6 address is served: see IPv6Programmed"
			}
			set(v1alpha1.ConditionAccepted, true, "Accepted", msg)
		}
	}
	switch shadowed := res.Shadowed[m.Name]; {
	case lost || refused:
		set(v1alpha1.ConditionInjectionConflict, false, "NotInjected", "this MagicIP is not injected at all (see Accepted)")
	case len(shadowed) > 0:
		set(v1alpha1.ConditionInjectionConflict, true, "NameTaken", shadowedMessage(shadowed))
	default:
		set(v1alpha1.ConditionInjectionConflict, false, "NoConflict", "no older MagicIP injects the same variable names or hostnames with other values")
	}
	if nsExists {
		set(ConditionProducerNamespace, true, "Found", "namespace "+m.Spec.Producer.Namespace+" exists")
	} else {
		set(ConditionProducerNamespace, false, "NamespaceNotFound",
			fmt.Sprintf("producer namespace %q does not exist: no pod can serve this address until it does", m.Spec.Producer.Namespace))
	}
	st.ObservedGeneration = gen
	st.PortSummary = m.Spec.PortSummary()
}

// shadowedMessage says which entries a MagicIP does not inject, and because of which MagicIPs.
func shadowedMessage(shadowed []Shadowed) string {
	var winners []string
	names := map[string][]string{}
	for _, sh := range shadowed {
		if _, seen := names[sh.Winner]; !seen {
			winners = append(winners, sh.Winner)
		}
		kind := "variable "
		if sh.Hostname {
			kind = "hostname "
		}
		names[sh.Winner] = append(names[sh.Winner], kind+sh.Name)
	}
	parts := make([]string, len(winners))
	for i, w := range winners {
		parts[i] = fmt.Sprintf("%s (injected by MagicIP %s)", strings.Join(names[w], ", "), w)
	}
	return "not injected because an older MagicIP (creation time, then name) injects the same name with another value: " +
		strings.Join(parts, "; ") + "; the other entries of this MagicIP are injected"
}
