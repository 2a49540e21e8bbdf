package webhook

import (
	"encoding/json"

	corev1 "k8s.io/api/core/v1"
)

// Pod is the part of a pod the webhook reads and changes: its name, annotations, containers'
// names, env and envFrom, and hostAliases, with the pod's JSON field names. Decoding only this part skips
// building the rest of the pod (images, volumes, probes, resources, ...) on every admission
// request.
type Pod struct {
	PodMeta `json:"metadata"`
	Spec    PodSpec `json:"spec"`
}

// PodMeta is the part of a pod's metadata the webhook reads.
type PodMeta struct {
	Name         string            `json:"name,omitempty"`
	GenerateName string            `json:"generateName,omitempty"`
	Annotations  map[string]string `json:"annotations,omitempty"`
}

// PodSpec is the part of a pod's spec the webhook reads and changes.
type PodSpec struct {
	InitContainers []Container        `json:"initContainers,omitempty"`
	Containers     []Container        `json:"containers,omitempty"`
	HostAliases    []corev1.HostAlias `json:"hostAliases,omitempty"`
}

// Container is a container's name, env and envFrom (read, never changed).
type Container struct {
	Name    string                 `json:"name"`
	Env     []corev1.EnvVar        `json:"env,omitempty"`
	EnvFrom []corev1.EnvFromSource `json:"envFrom,omitempty"`
}

// DecodePod decodes the part of a pod the webhook reads from the pod's JSON.
func DecodePod(raw []byte) (*Pod, error) {
	pod := &Pod{}
	if err := json.Unmarshal(raw, pod); err != nil {
		return nil, err
	}
	return pod, nil
}
