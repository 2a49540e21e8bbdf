package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The agents' datapaths (MagicIPNode.Datapath, the agent's --datapath choice).
const (
	// DatapathIPTables: iptables NAT and filter rules, one iptables-restore per sync.
	DatapathIPTables = "iptables"
	// DatapathNFTables: the agent's own nftables table, one netlink transaction per sync.
	DatapathNFTables = "nftables"
)

// Reasons a MagicIP is (not) programmed on a node (MagicIPOnNode.Reason).
const (
	// ReasonProgrammed: the address and the rules are in place.
	ReasonProgrammed = "Programmed"
	// ReasonInterfaceUnavailable: the MagicIP's host interface is missing or refused the address.
	ReasonInterfaceUnavailable = "InterfaceUnavailable"
	// ReasonSyncFailed: the agent's last sync failed; the node may lag behind the API.
	ReasonSyncFailed = "SyncFailed"
	// ReasonConflict: an older MagicIP claims the same address, port and protocol.
	ReasonConflict = "Conflict"
	// ReasonInvalid: the MagicIP cannot be programmed (address family, --allowed-address-ranges).
	ReasonInvalid = "Invalid"
)

// MagicIPNode is one node agent's report: for every MagicIP, whether it is programmed on that node
// and which local producers serve it. Each agent owns the one named after its node (owned by the
// Node, so it goes with it) and writes it only when its content changes; the status controller
// sums them up into every MagicIP's status.nodes, and `kubectl magic-ip status` shows them.
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Cluster,shortName=mipnode,categories=magic-ip
// +kubebuilder:printcolumn:name="Datapath",type=string,JSONPath=`.datapath`
// +kubebuilder:printcolumn:name="Last-Sync",type=date,JSONPath=`.lastSyncTime`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type MagicIPNode struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// Datapath is how the node is programmed: iptables or nftables.
	// +optional
	// +kubebuilder:validation:MaxLength=32
	Datapath string `json:"datapath,omitempty"`

	// AgentStartTime is when the agent that wrote this record started: a restarted agent writes
	// its record once, so a record older than the running agent means that agent has not reported.
	// +optional
	AgentStartTime *metav1.Time `json:"agentStartTime,omitempty"`

	// LastSyncTime is the time of the sync that last changed this record (records are written only
	// when their content changes, never periodically: an idle node keeps an old time).
	// +optional
	LastSyncTime *metav1.Time `json:"lastSyncTime,omitempty"`

	// MagicIPs lists every MagicIP the agent knows, by name.
	// +optional
	// +listType=map
	// +listMapKey=name
	// +kubebuilder:validation:MaxItems=1024
	MagicIPs []MagicIPOnNode `json:"magicIPs,omitempty"`
}

// MagicIPOnNode is the state of one MagicIP on one node.
type MagicIPOnNode struct {
	// Name of the MagicIP.
	// +required
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`

	// Programmed is true when the address and the rules of the MagicIP are in place on the node.
	// +required
	Programmed bool `json:"programmed"`

	// Reason is Programmed, InterfaceUnavailable, SyncFailed, Conflict or Invalid.
	// +optional
	// +kubebuilder:validation:MaxLength=64
	Reason string `json:"reason,omitempty"`

	// Message says why it is not programmed.
	// +optional
	// +kubebuilder:validation:MaxLength=1024
	Message string `json:"message,omitempty"`

	// UnprogrammedAddresses are the MagicIP's addresses left out on the node while the rest of it
	// is programmed, with why: the address of a family the node does not program
	// (AddressFamilyNotSupported: the IPv6 one without IPv6, the IPv4 one on an IPv6-only node),
	// or an ipv6Address its --allowed-address-ranges refuse (AddressNotAllowed).
	// +optional
	// +listType=map
	// +listMapKey=address
	// +kubebuilder:validation:MaxItems=2
	UnprogrammedAddresses []UnprogrammedAddress `json:"unprogrammedAddresses,omitempty"`

	// Producers are the local producer pods new connections go to (none: connections get the
	// MagicIP's whenNoLocalProducer).
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=64
	Producers []LocalProducer `json:"producers,omitempty"`
}

// UnprogrammedAddress is one address of a MagicIP that is not programmed, with why.
type UnprogrammedAddress struct {
	// Address is the magic address left out.
	// +required
	// +kubebuilder:validation:MaxLength=45
	Address string `json:"address"`
	// Reason is AddressFamilyNotSupported or AddressNotAllowed.
	// +required
	// +kubebuilder:validation:MaxLength=64
	Reason string `json:"reason"`
	// Message says why, and what is served instead.
	// +optional
	// +kubebuilder:validation:MaxLength=512
	Message string `json:"message,omitempty"`
}

// LocalProducer is a producer pod on the node.
type LocalProducer struct {
	// Pod is namespace/name.
	// +required
	// +kubebuilder:validation:MaxLength=317
	Pod string `json:"pod"`
	// IP is the pod's address.
	// +required
	// +kubebuilder:validation:MaxLength=45
	IP string `json:"ip"`
	// Terminating: the pod is being deleted and still serves; it is used only while no Ready
	// producer is left.
	// +optional
	Terminating bool `json:"terminating,omitempty"`
}

// MagicIPNodeList is a list of MagicIPNodes.
// +kubebuilder:object:root=true
type MagicIPNodeList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []MagicIPNode `json:"items"`
}

// Find returns the entry of the MagicIP named name, or nil.
func (n *MagicIPNode) Find(name string) *MagicIPOnNode {
	for i := range n.MagicIPs {
		if n.MagicIPs[i].Name == name {
			return &n.MagicIPs[i]
		}
	}
	return nil
}
