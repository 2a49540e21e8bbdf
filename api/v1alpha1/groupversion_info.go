// Package v1alpha1 holds the MagicIP API, group magic-ip.dev.
// +kubebuilder:object:generate=true
// +groupName=magic-ip.dev
package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// GroupVersion is the API group and version of MagicIP.
var GroupVersion = schema.GroupVersion{Group: "magic-ip.dev", Version: "v1alpha1"}

// AddToScheme registers MagicIP and MagicIPList with s.
func AddToScheme(s *runtime.Scheme) error {
	s.AddKnownTypes(GroupVersion, &MagicIP{}, &MagicIPList{}, &MagicIPNode{}, &MagicIPNodeList{})
	metav1.AddToGroupVersion(s, GroupVersion)
	return nil
}
