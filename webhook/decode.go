package webhook

import (
	"encoding/json"

	corev1 "k8s.io/api/core/v1"
)

// podView is the part of a pod Mutate and Patch read; decoding only this part skips building the
// rest of the pod (volumes, probes, resources, ...) on every admission request.
type podView struct {
	Metadata struct {
		Name         string            `json:"name"`
		GenerateName string            `json:"generateName"`
		Annotations  map[string]string `json:"annotations"`
	} `json:"metadata"`
	Spec struct {
		InitContainers []containerView    `json:"initContainers"`
		Containers     []containerView    `json:"containers"`
		HostAliases    []corev1.HostAlias `json:"hostAliases"`
	} `json:"spec"`
}

type containerView struct {
	Name string          `json:"name"`
	Env  []corev1.EnvVar `json:"env"`
}

// DecodePod decodes what Mutate and Patch need of a pod: its name, annotations, containers'
// names and env, and hostAliases. The rest of the returned pod is left empty.
func DecodePod(raw []byte) (*corev1.Pod, error) {
	var v podView
	if err := json.Unmarshal(raw, &v); err != nil {
		return nil, err
	}
	pod := &corev1.Pod{}
	pod.Name, pod.GenerateName, pod.Annotations = v.Metadata.Name, v.Metadata.GenerateName, v.Metadata.Annotations
	pod.Spec.InitContainers = containers(v.Spec.InitContainers)
	pod.Spec.Containers = containers(v.Spec.Containers)
	pod.Spec.HostAliases = v.Spec.HostAliases
	return pod, nil
}

func containers(views []containerView) []corev1.Container {
	if views == nil {
		return nil
	}
	out := make([]corev1.Container, len(views))
	for i, c := range views {
		out[i].Name, out[i].Env = c.Name, c.Env
	}
	return out
}
