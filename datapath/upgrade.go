package datapath

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"github.com/sluicenet/sluice/bpf"
	"github.com/sluicenet/sluice/ipsets"
)

// Version 1 of struct sl_ipset_key, 32 bytes: prefixlen, set_id[8],
// addr[16], port, proto, pad. Its prefix lengths counted set_id (64 bits),
// 96 more for an IPv4 member, the member's bits; named-port members were
// written with 216 or 224.
const (
	ipsetKeyV1Size      = 32
	ipsetKeyV1SetBits   = 64
	ipsetKeyV1NamedPort = 216
)

// upgradeIPSetKey turns a version 1 IP set member into version 2, which
// matches the family: the member's family is what its address and length
// said, so an IPv6 member that covered IPv4-mapped space no longer
// matches IPv4 addresses, as ipsets.Members always said.
func upgradeIPSetKey(key, value []byte) ([]byte, []byte, bool, error) {
	if len(key) != ipsetKeyV1Size {
		return nil, nil, false, fmt.Errorf("ip set key of %d bytes, want %d", len(key), ipsetKeyV1Size)
	}
	plen := int(binary.NativeEndian.Uint32(key))
	id := binary.BigEndian.Uint64(key[4:12])
	addr := netip.AddrFrom16([16]byte(key[12:28]))
	port := binary.NativeEndian.Uint16(key[28:30])
	proto := key[30]
	var k bpf.IPSetKey
	var err error
	switch {
	case plen >= ipsetKeyV1NamedPort:
		k, err = ipsets.NamedPortKey(id, ipsets.NamedPort{Addr: addr.Unmap(), Protocol: proto, Port: port})
	case addr.Is4In6() && plen >= ipsetKeyV1SetBits+96:
		k, err = ipsets.NetKey(id, netip.PrefixFrom(addr.Unmap(), plen-ipsetKeyV1SetBits-96))
	default:
		k, err = ipsets.NetKey(id, netip.PrefixFrom(addr, plen-ipsetKeyV1SetBits))
	}
	if err != nil {
		// A member no version 2 key can hold (a named port with
		// protocol 0, an IPv6 prefix inside ::ffff:0:0/96) never
		// matched what its writer meant: drop it.
		return nil, nil, false, nil
	}
	out, err := binary.Append(nil, binary.NativeEndian, k)
	if err != nil {
		return nil, nil, false, fmt.Errorf("encode ip set key: %w", err)
	}
	return out, value, true, nil
}
