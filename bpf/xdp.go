package bpf

import (
	"fmt"

	"github.com/cilium/ebpf"
)

// The XDP object (xdp.c) is separate from the TC datapath: ProgXDP is
// attached to host interfaces and reads each one's settings from
// MapXDPIfaces (Iface entries whose records name, in Ingress, the XDP
// policy's slot in MapXDPPolicyJumps). XDP policy programs
// (polprog.HookXDP) end in ProgXDPAllow or ProgXDPDeny in MapXDPConts,
// at the ContSlot slots of MapConts. The object counts its drops in the
// datapath's MapCounters, under each interface's ingress hook, and the
// loader shares that map with it (ebpf.CollectionOptions.MapReplacements).
// Kernel features beyond the datapath's: BPF_PROG_TYPE_XDP and
// bpf_xdp_load_bytes (Linux 5.18).
//
// XDPObjects are the XDP object's programs, maps and variables, as
// bpf2go generates them.
type XDPObjects = xdpObjects

// XDPSpecs are the XDP object's program, map and variable specs, for
// ebpf.CollectionSpec.Assign.
type XDPSpecs = xdpSpecs

// LoadXDPSpec returns a fresh CollectionSpec of the XDP object, as
// LoadSpec does of the datapath's.
func LoadXDPSpec() (*ebpf.CollectionSpec, error) {
	spec, err := loadXdp()
	if err != nil {
		return nil, fmt.Errorf("load xdp spec: %w", err)
	}
	return spec, nil
}

// Names of the programs and maps in the XDP collection.
const (
	// ProgXDP is the program for the XDP hook of host interfaces.
	ProgXDP = xdpProgSlXdp
	// ProgXDPAllow is the continuation an XDP policy tail-calls to allow
	// a packet (MapXDPConts slot ContAllow): it passes to TC.
	ProgXDPAllow = xdpProgSlXdpAllow
	// ProgXDPDeny is the continuation an XDP policy tail-calls to deny a
	// packet (MapXDPConts slot ContDeny): it drops and counts.
	ProgXDPDeny = xdpProgSlXdpDeny
	// ProgXDPPass passes every packet: a floor for benchmarks.
	ProgXDPPass = xdpProgSlXdpPass

	// MapXDPIfaces is the hash of host interfaces' XDP settings, ifindex
	// (uint32) to Iface.
	MapXDPIfaces = xdpMapSlXdpifaces
	// MapXDPState is the per-CPU array holding the State of the packet
	// an XDP policy decides.
	MapXDPState = xdpMapSlXdpState
	// MapXDPPending is the per-CPU array of the packet that waits for an
	// XDP policy: its ifindex in the high 32 bits of a uint64, its
	// MapCounters index in the low ones.
	MapXDPPending = xdpMapSlXdpPending
	// MapXDPPolicyJumps is the prog array holding XDP policy programs.
	MapXDPPolicyJumps = xdpMapSlXdpPolicyJumps
	// MapXDPConts is the prog array of the programs XDP policies continue
	// into.
	MapXDPConts = xdpMapSlXdpConts
)
