package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Protocol is the transport protocol of a MagicIP port.
// +kubebuilder:validation:Enum=TCP;UDP
type Protocol string

const (
	ProtocolTCP Protocol = "TCP"
	ProtocolUDP Protocol = "UDP"
)

// NoLocalProducerAction says what happens to traffic for the magic IP on a node
// that has no usable producer (none Ready, and no terminating one still serving).
// +kubebuilder:validation:Enum=Reject;Drop;Fallback
type NoLocalProducerAction string

const (
	// Reject answers at once: a TCP reset or an ICMP port-unreachable, so clients fail fast.
	Reject NoLocalProducerAction = "Reject"
	// Drop discards the packets silently: clients time out.
	Drop NoLocalProducerAction = "Drop"
	// Fallback sends new connections to the Ready producers on other nodes, spread across them,
	// until a local producer is usable again; with none Ready anywhere, clients are refused as
	// with Reject. The consumer's pod IP is kept (no SNAT): the remote producer sees who sent.
	Fallback NoLocalProducerAction = "Fallback"
)

// Condition types and reasons on a MagicIP's status.
const (
	// ConditionAccepted is True when the MagicIP is valid and owns all its address+port+protocol claims.
	ConditionAccepted = "Accepted"
	// ConditionConflict is True when an older MagicIP already claims one of its address+port+protocol.
	ConditionConflict = "Conflict"
	// ConditionInjectionConflict is True when an older MagicIP injects one of its variable names or
	// hostnames with another value: those entries are not injected for it (the rest are).
	ConditionInjectionConflict = "InjectionConflict"
)

// MagicIPSpec is the desired state of a MagicIP.
// +kubebuilder:validation:XValidation:rule="!has(self.inject) || !has(self.inject.extraEnv) || self.inject.extraEnv.all(e, e.value.findAll('[{]port:[^}]*[}]').all(m, self.ports.exists(p, m == '{port:' + p.name + '}')))",message="inject.extraEnv: a {port:NAME} placeholder must name a port listed in spec.ports",fieldPath=".inject.extraEnv"
// +kubebuilder:validation:XValidation:rule="!has(self.ipv6Address) || !isIP(self.address) || ip(self.address).family() == 4",message="must be the IPv4 address when spec.ipv6Address is set: a MagicIP has at most one address per family (an IPv6-only MagicIP sets spec.address alone)",fieldPath=".address"
// +kubebuilder:validation:XValidation:rule="has(self.ipv6Address) || !has(self.inject) || !has(self.inject.extraEnv) || self.inject.extraEnv.all(e, !e.value.contains('{address6}'))",message="inject.extraEnv: the {address6} placeholder needs spec.ipv6Address",fieldPath=".inject.extraEnv"
type MagicIPSpec struct {
	// Address is the well-known IP that pods connect to, for example 169.254.210.210 (link-local
	// addresses are the usual choice). It must be in canonical form and must not be loopback,
	// unspecified, multicast, broadcast, or a cloud platform's address (169.254.169.254 and the
	// others listed in the README). An IPv6 address here alone is accepted but not served yet
	// (Accepted=False, AddressFamilyNotSupported): a dual-stack MagicIP, served on both, has its
	// IPv4 address here and its IPv6 address in ipv6Address.
	// +required
	// +kubebuilder:validation:MaxLength=45
	// +kubebuilder:validation:XValidation:rule="isIP(self)",message="must be an IP address such as 169.254.210.210"
	// +kubebuilder:validation:XValidation:rule="!isIP(self) || ip.isCanonical(self)",message="must be written in canonical form (for IPv6: lower case, shortest form, e.g. fd00::10)"
	// +kubebuilder:validation:XValidation:rule="!isIP(self) || !ip(self).isLoopback()",message="must not be a loopback address: pods would reach themselves; use a link-local address such as 169.254.210.210"
	// +kubebuilder:validation:XValidation:rule="!isIP(self) || !ip(self).isUnspecified()",message="must not be the unspecified address (0.0.0.0 or ::); use a link-local address such as 169.254.210.210"
	// +kubebuilder:validation:XValidation:rule="!isIP(self) || ip(self).isLoopback() || ip(self).isUnspecified() || ip(self).isGlobalUnicast() || ip(self).isLinkLocalUnicast()",message="must be a unicast address, not multicast or broadcast; use a link-local address such as 169.254.210.210"
	//
	// The cloud platform addresses refused:
	// 169.254.169.254 instance metadata (AWS, Azure, GCP, OpenStack, Oracle, DigitalOcean, ...),
	// 169.254.169.123 and fd00:ec2::123 AWS time sync, 169.254.169.253 and fd00:ec2::253 AWS DNS,
	// 169.254.170.2 ECS task metadata and credentials, 169.254.170.23 and fd00:ec2::23 EKS Pod
	// Identity, fd00:ec2::254 AWS IMDS (IPv6), fd20:ce::254 GCP metadata (IPv6), 169.254.0.23
	// Tencent Cloud, 100.100.100.200 Alibaba Cloud, 168.63.129.16 Azure WireServer (DNS, DHCP,
	// health probes), 169.254.42.42 and fd00:42::42 Scaleway, 192.0.0.192 Oracle Cloud Classic.
	// +kubebuilder:validation:XValidation:rule="!(self in ['169.254.169.254', '169.254.169.123', '169.254.169.253', '169.254.170.2', '169.254.170.23', '169.254.0.23', '169.254.42.42', '100.100.100.200', '168.63.129.16', '192.0.0.192', 'fd00:ec2::254', 'fd00:ec2::123', 'fd00:ec2::253', 'fd00:ec2::23', 'fd20:ce::254', 'fd00:42::42'])",messageExpression="'must not be ' + self + ', a cloud platform address (instance metadata, credentials, time or DNS; see the README): the MagicIP would take it over on every node; use another link-local address such as 169.254.210.210'"
	Address string `json:"address"`

	// IPv6Address makes the MagicIP dual-stack: the IPv6 well-known address, next to the IPv4 one
	// in address (which must then be IPv4), for example fd00::a9fe:d2d2. It must be in canonical
	// form, in fe80::/10 (link-local) or fd00::/8 (the locally assigned unique-local half: the
	// agent's default --allowed-address-ranges), and not a cloud platform's address (listed under
	// address). It claims the same ports as address. Agents program it next to address, to the
	// producers' IPv6 addresses; a node that cannot (no IPv6) programs address and reports this one
	// not programmed (AddressFamilyNotSupported). The webhook injects it as
	// <NAME>_MAGIC_HOST_IPV6, {address6} and a hostAliases entry.
	// +optional
	// +kubebuilder:validation:MaxLength=45
	// +kubebuilder:validation:XValidation:rule="isIP(self) && ip(self).family() == 6",message="must be an IPv6 address such as fd00::a9fe:d2d2 (the IPv4 address goes in spec.address)"
	// +kubebuilder:validation:XValidation:rule="!isIP(self) || ip.isCanonical(self)",message="must be written in canonical form (lower case, shortest form, e.g. fd00::10)"
	// +kubebuilder:validation:XValidation:rule="!isIP(self) || ip(self).family() != 6 || cidr('fe80::/10').containsIP(self) || cidr('fd00::/8').containsIP(self)",message="must be in fe80::/10 (link-local) or fd00::/8 (unique local), the ranges every node may own and nothing routes, e.g. fd00::a9fe:d2d2"
	// +kubebuilder:validation:XValidation:rule="!(self in ['169.254.169.254', '169.254.169.123', '169.254.169.253', '169.254.170.2', '169.254.170.23', '169.254.0.23', '169.254.42.42', '100.100.100.200', '168.63.129.16', '192.0.0.192', 'fd00:ec2::254', 'fd00:ec2::123', 'fd00:ec2::253', 'fd00:ec2::23', 'fd20:ce::254', 'fd00:42::42'])",messageExpression="'must not be ' + self + ', a cloud platform address (instance metadata, credentials, time or DNS; see the README): the MagicIP would take it over on every node; use another address such as fd00::a9fe:d2d2'"
	IPv6Address string `json:"ipv6Address,omitempty"`

	// Ports served at the address. Names and (port, protocol) pairs must be unique.
	// +required
	// +listType=map
	// +listMapKey=name
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=16
	// +kubebuilder:validation:XValidation:rule="self.all(p, self.exists_one(q, q.port == p.port && q.protocol == p.protocol))",message="each (port, protocol) pair may appear only once"
	Ports []MagicIPPort `json:"ports"`

	// Producer selects the pods that serve the address: on each node, traffic goes to the Ready
	// producers running on that same node.
	// +required
	Producer Producer `json:"producer"`

	// HostInterface is the node interface the address is put on. Empty means the agent's default
	// (its --host-interface flag).
	// +optional
	// +kubebuilder:validation:MaxLength=15
	// +kubebuilder:validation:Pattern=`^[A-Za-z0-9][A-Za-z0-9_.-]*$`
	HostInterface string `json:"hostInterface,omitempty"`

	// WhenNoLocalProducer says what clients on a node without a usable producer (none Ready, and
	// no terminating one still serving) get: Reject (default) refuses at once, Drop lets them
	// time out, Fallback sends new connections to the Ready producers on other nodes (refused
	// when there are none) until a local producer is usable again.
	// +optional
	// +kubebuilder:default=Reject
	WhenNoLocalProducer NoLocalProducerAction `json:"whenNoLocalProducer,omitempty"`

	// Inject says what the webhook adds to consumer pods in opted-in namespaces.
	// +optional
	// +kubebuilder:default={}
	Inject Inject `json:"inject,omitempty"`
}

// MagicIPPort is one port served at the magic address.
type MagicIPPort struct {
	// Name identifies the port in env var names and placeholders: at most 15 lower case letters,
	// digits and '-' (like a container port name), unique in the list.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=15
	// +kubebuilder:validation:XValidation:rule="self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')",message="must be a DNS label: lower case letters, digits and '-', starting and ending with a letter or digit (e.g. 'apm')"
	Name string `json:"name"`

	// Port is the port clients connect to on the magic address.
	// +required
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	Port int32 `json:"port"`

	// TargetPort is the port on the producer pod. Omitted or 0 means the same as port.
	// +optional
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=65535
	TargetPort int32 `json:"targetPort,omitempty"`

	// Protocol is TCP (default) or UDP.
	// +optional
	// +kubebuilder:default=TCP
	Protocol Protocol `json:"protocol,omitempty"`
}

// Producer selects the pods that receive the traffic. Only pods in Namespace can ever be chosen.
type Producer struct {
	// Namespace of the producer pods.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:XValidation:rule="self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')",message="must be a namespace name (a DNS label), e.g. 'datadog'"
	Namespace string `json:"namespace"`

	// Selector picks the producer pods by label, as a Deployment's selector does. It must not be
	// empty: an empty selector would match every pod in the namespace.
	// +required
	// +kubebuilder:validation:XValidation:rule="(has(self.matchLabels) && size(self.matchLabels) > 0) || (has(self.matchExpressions) && size(self.matchExpressions) > 0)",message="must not be empty: set matchLabels (e.g. app: datadog-agent) or matchExpressions"
	Selector LabelSelector `json:"selector"`
}

// LabelSelector is metav1.LabelSelector (same fields, same YAML) with bounds and checks the API
// server can enforce.
// +structType=atomic
type LabelSelector struct {
	// MatchLabels: a pod matches when it has every one of these labels.
	// +optional
	// +kubebuilder:validation:MaxProperties=16
	// +kubebuilder:validation:XValidation:rule="self.all(k, size(k) <= 317 && k.matches('^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$'))",message="keys must be label keys: an optional DNS prefix and '/', then up to 63 letters, digits, '-', '_' or '.', e.g. app or app.kubernetes.io/name"
	// +kubebuilder:validation:XValidation:rule="self.all(k, size(self[k]) <= 63)",message="values must be label values of at most 63 characters"
	MatchLabels map[string]string `json:"matchLabels,omitempty"`

	// MatchExpressions: a pod matches when it meets every requirement.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=16
	MatchExpressions []LabelSelectorRequirement `json:"matchExpressions,omitempty"`
}

// LabelSelectorRequirement is metav1.LabelSelectorRequirement with its rules checked by the API server.
// +kubebuilder:validation:XValidation:rule="!(self.operator in ['In', 'NotIn']) || (has(self.values) && size(self.values) > 0)",message="values must not be empty when the operator is In or NotIn"
// +kubebuilder:validation:XValidation:rule="!(self.operator in ['Exists', 'DoesNotExist']) || !has(self.values) || size(self.values) == 0",message="values must be empty when the operator is Exists or DoesNotExist"
type LabelSelectorRequirement struct {
	// Key is the label key.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=317
	Key string `json:"key"`
	// Operator is In, NotIn, Exists or DoesNotExist.
	// +required
	// +kubebuilder:validation:Enum=In;NotIn;Exists;DoesNotExist
	Operator metav1.LabelSelectorOperator `json:"operator"`
	// Values for In and NotIn.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:items:MaxLength=63
	Values []string `json:"values,omitempty"`
}

// Inject says what the webhook adds to consumer pods.
// +kubebuilder:validation:XValidation:rule="!has(self.podIdentity) || self.podIdentity.all(i, !(has(self.extraEnv) && self.extraEnv.exists(e, e.name == i.name)) && !(has(self.nodeMetadata) && self.nodeMetadata && i.name in ['NODE_NAME', 'NODE_IP']))",message="a name must not also be an extraEnv name, nor NODE_NAME or NODE_IP when nodeMetadata is true: the pod would get only one of the two values",fieldPath=".podIdentity"
type Inject struct {
	// Env adds the standard variables <NAME>_MAGIC_HOST, <NAME>_MAGIC_PORT and
	// <NAME>_MAGIC_PORT_<PORTNAME>, where NAME is the MagicIP's name upper-cased with '-' as '_',
	// and <NAME>_MAGIC_HOST_IPV6 (spec.ipv6Address) when the MagicIP is dual-stack.
	// +optional
	// +kubebuilder:default=true
	Env *bool `json:"env,omitempty"`

	// ExtraEnv adds variables whose values are templates: {address} is the magic address,
	// {address6} the IPv6 one (spec.ipv6Address; write http://[{address6}]:{port} in a URL),
	// {port} the first port and {port:NAME} the port named NAME, e.g. http://{address}:{port:apm}.
	// +optional
	// +listType=map
	// +listMapKey=name
	// +kubebuilder:validation:MaxItems=16
	ExtraEnv []EnvTemplate `json:"extraEnv,omitempty"`

	// Hostnames are added to the pod's hostAliases, resolving to the magic address, and to
	// spec.ipv6Address too when it is set (one hostAliases entry per address).
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=16
	// +kubebuilder:validation:items:MaxLength=253
	// +kubebuilder:validation:items:XValidation:rule="self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')",message="must be a DNS-1123 subdomain: lower case letters, digits, '-' and '.', e.g. datadog.node.local"
	Hostnames []string `json:"hostnames,omitempty"`

	// NodeMetadata adds NODE_NAME and NODE_IP from the downward API.
	// +optional
	NodeMetadata bool `json:"nodeMetadata,omitempty"`

	// PodIdentity adds variables that carry the consumer pod's own name, namespace or UID, which
	// the kubelet fills in from the downward API, so that a producer can tell which pod sent what
	// it receives (origin detection), e.g. {name: DD_ENTITY_ID, fieldPath: metadata.uid} for
	// Datadog. Added after the other injected variables and, like them, only where the container
	// sets no variable of that name (in env, or possibly through envFrom).
	// +optional
	// +listType=map
	// +listMapKey=name
	// +kubebuilder:validation:MaxItems=8
	PodIdentity []PodIdentityEnv `json:"podIdentity,omitempty"`
}

// Pod identity fields a MagicIP can inject (PodIdentityEnv.FieldPath): the downward API's paths.
const (
	FieldPodName      = "metadata.name"
	FieldPodNamespace = "metadata.namespace"
	FieldPodUID       = "metadata.uid"
)

// PodIdentityEnv is a variable whose value is one field of the consumer pod's identity.
type PodIdentityEnv struct {
	// Name of the variable: a C identifier (letters, digits, '_', not starting with a digit),
	// unique in the list, and not also an extraEnv name (nor NODE_NAME or NODE_IP with nodeMetadata).
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=128
	// +kubebuilder:validation:XValidation:rule="self.matches('^[A-Za-z_][A-Za-z0-9_]*$')",message="must be a C identifier: letters, digits and '_', not starting with a digit (e.g. DD_ENTITY_ID)"
	Name string `json:"name"`

	// FieldPath is the pod field, as in a downward API fieldRef: metadata.name, metadata.namespace
	// or metadata.uid.
	// +required
	// +kubebuilder:validation:MaxLength=64
	// +kubebuilder:validation:XValidation:rule="self in ['metadata.name', 'metadata.namespace', 'metadata.uid']",message="must be metadata.name, metadata.namespace or metadata.uid (the pod's name, namespace or UID); for the node's name and IP use nodeMetadata"
	FieldPath string `json:"fieldPath"`
}

// EnvTemplate is an environment variable whose value may contain placeholders.
type EnvTemplate struct {
	// Name of the variable: a C identifier (letters, digits, '_', not starting with a digit).
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=128
	// +kubebuilder:validation:XValidation:rule="self.matches('^[A-Za-z_][A-Za-z0-9_]*$')",message="must be a C identifier: letters, digits and '_', not starting with a digit (e.g. DD_AGENT_HOST)"
	Name string `json:"name"`

	// Value template. Placeholders: {address}, {address6}, {port}, {port:NAME}.
	// +required
	// +kubebuilder:validation:MaxLength=256
	// +kubebuilder:validation:XValidation:rule="self.findAll('[{][^}]*[}]').all(m, m == '{address}' || m == '{address6}' || m == '{port}' || m.startsWith('{port:'))",message="unknown placeholder: use {address}, {address6}, {port} or {port:NAME}"
	Value string `json:"value"`
}

// MagicIPStatus is the observed state of a MagicIP, kept by the magic-ip controller.
type MagicIPStatus struct {
	// ObservedGeneration is the generation the conditions were computed for.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// PortSummary lists the ports for display, e.g. "8126/TCP,8125/UDP" (the Ports column).
	// +optional
	PortSummary string `json:"portSummary,omitempty"`

	// Conditions: Accepted (False when the MagicIP is in Conflict or its address is IPv6, which
	// agents do not program yet), Conflict when an older MagicIP claims the same
	// address+port+protocol, InjectionConflict when an older MagicIP injects one of the same variable
	// names or hostnames with another value, and ProducerNamespaceFound.
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// Nodes sums up the agents' per-node records (MagicIPNode): on how many nodes this MagicIP is
	// programmed, has a local producer, or is failing. Updated at a bounded rate.
	// +optional
	Nodes *NodeCounts `json:"nodes,omitempty"`
}

// NodeCounts counts nodes by what their agent reports about one MagicIP.
type NodeCounts struct {
	// Programmed: nodes where the address and rules are in place.
	Programmed int32 `json:"programmed"`
	// LocalProducers: programmed nodes with at least one local producer.
	LocalProducers int32 `json:"localProducers"`
	// Failing: nodes where it is not programmed (interface unavailable, sync failed, invalid...).
	Failing int32 `json:"failing"`
}

// MagicIP gives pods one static address that reaches the copy of a service on their own node.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,shortName=mip,categories=magic-ip
// +kubebuilder:printcolumn:name="Address",type=string,JSONPath=`.spec.address`
// +kubebuilder:printcolumn:name="IPv6-Address",type=string,JSONPath=`.spec.ipv6Address`,priority=1
// +kubebuilder:printcolumn:name="Ports",type=string,JSONPath=`.status.portSummary`
// +kubebuilder:printcolumn:name="Programmed",type=integer,JSONPath=`.status.nodes.programmed`
// +kubebuilder:printcolumn:name="Local-Producers",type=integer,JSONPath=`.status.nodes.localProducers`
// +kubebuilder:printcolumn:name="Failing",type=integer,JSONPath=`.status.nodes.failing`
// +kubebuilder:printcolumn:name="Accepted",type=string,JSONPath=`.status.conditions[?(@.type=="Accepted")].status`
// +kubebuilder:printcolumn:name="Producer",type=string,JSONPath=`.spec.producer.namespace`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type MagicIP struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   MagicIPSpec   `json:"spec"`
	Status MagicIPStatus `json:"status,omitempty"`
}

// MagicIPList is a list of MagicIPs.
// +kubebuilder:object:root=true
type MagicIPList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []MagicIP `json:"items"`
}
