package kube

import (
	"reflect"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/magic-ip/magic-ip/api/v1alpha1"
)

func TestSlimPod(t *testing.T) {
	del := metav1.Now()
	full := &corev1.Pod{
		TypeMeta: metav1.TypeMeta{Kind: "Pod", APIVersion: "v1"},
		ObjectMeta: metav1.ObjectMeta{
			Name: "dd-1", Namespace: "datadog", UID: "u", ResourceVersion: "7", Labels: map[string]string{"app": "dd"},
			Annotations: map[string]string{"big": "yes"}, DeletionTimestamp: &del,
			ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubelet"}},
		},
		Spec: corev1.PodSpec{NodeName: "n1", HostNetwork: true, Containers: []corev1.Container{{Name: "agent", Image: "dd"}}},
		Status: corev1.PodStatus{
			Phase: corev1.PodRunning, PodIP: "10.244.1.5", PodIPs: []corev1.PodIP{{IP: "10.244.1.5"}},
			Conditions: []corev1.PodCondition{
				{Type: corev1.PodScheduled, Status: corev1.ConditionTrue},
				{Type: corev1.PodReady, Status: corev1.ConditionTrue, Reason: "r", Message: "m"},
			},
			ContainerStatuses: []corev1.ContainerStatus{{Name: "agent"}},
		},
	}
	want := &corev1.Pod{
		TypeMeta: metav1.TypeMeta{Kind: "Pod", APIVersion: "v1"},
		ObjectMeta: metav1.ObjectMeta{
			Name: "dd-1", Namespace: "datadog", UID: "u", ResourceVersion: "7", Labels: map[string]string{"app": "dd"}, DeletionTimestamp: &del,
		},
		Spec: corev1.PodSpec{NodeName: "n1", HostNetwork: true},
		Status: corev1.PodStatus{
			Phase: corev1.PodRunning, PodIP: "10.244.1.5", PodIPs: []corev1.PodIP{{IP: "10.244.1.5"}},
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}},
		},
	}
	got, err := SlimPod(full)
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("SlimPod = %+v, %v\nwant %+v", got, err, want)
	}
	tomb := cache.DeletedFinalStateUnknown{Key: "datadog/dd-1", Obj: full}
	if got, err := SlimPod(tomb); err != nil || !reflect.DeepEqual(got, tomb) {
		t.Errorf("SlimPod(%T) changed it: %+v, %v", tomb, got, err)
	}
}

func TestStripManagedFields(t *testing.T) {
	m := &v1alpha1.MagicIP{ObjectMeta: metav1.ObjectMeta{Name: "a", ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubectl"}}}}
	got, err := stripManagedFields(m)
	if err != nil || got.(*v1alpha1.MagicIP).ManagedFields != nil || got.(*v1alpha1.MagicIP).Name != "a" {
		t.Errorf("stripManagedFields = %+v, %v", got, err)
	}
}

func TestList(t *testing.T) {
	s := cache.NewStore(cache.MetaNamespaceKeyFunc)
	for _, name := range []string{"b", "a"} {
		if err := s.Add(&v1alpha1.MagicIP{ObjectMeta: metav1.ObjectMeta{Name: name}}); err != nil {
			t.Fatal(err)
		}
	}
	var names []string
	for _, m := range List[v1alpha1.MagicIP](s) {
		names = append(names, m.Name)
	}
	slices.Sort(names)
	if !slices.Equal(names, []string{"a", "b"}) {
		t.Errorf("List = %v, want [a b]", names)
	}
	if pods := List[corev1.Pod](s); len(pods) != 0 {
		t.Errorf("List of another type = %v, want none", pods)
	}
}
