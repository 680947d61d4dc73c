package testpkt

import (
	"errors"
	"fmt"
)

// Fragment splits an Ethernet+IPv4 frame into IPv4 fragments whose payloads
// hold at most size bytes, rounded down to a multiple of 8 as fragment
// offsets require. Build the whole datagram first so its L4 checksum covers
// all of it, as a real sender's does. Each fragment gets a copy of the
// Ethernet header with its VLAN tags and of the IPv4 header with all its
// options, its own total length, offset, MF bit and header checksum;
// splitting a fragment again keeps its offset and MF bit. Bytes past the
// total length are dropped.
func Fragment(frame []byte, size int) ([][]byte, error) {
	_, typ, l3, err := splitEth(frame)
	if err != nil || typ != EtherTypeIPv4 || len(frame) < l3+IPv4MinLen {
		return nil, errors.New("fragment: not an Ethernet frame holding an IPv4 header")
	}
	ip := frame[l3:]
	hlen, total := int(ip[0]&0x0f)*4, int(be.Uint16(ip[2:]))
	if hlen < IPv4MinLen || total < hlen || total > len(ip) {
		return nil, fmt.Errorf("fragment: IHL %d and total length %d do not fit %d bytes", ip[0]&0x0f, total, len(ip))
	}
	size &^= 7
	if size < 8 {
		return nil, fmt.Errorf("fragment: size %d leaves no 8-byte unit", size)
	}
	frag := be.Uint16(ip[6:])
	offset, moreAfter := int(frag&0x1fff), frag&0x2000 != 0
	payload := ip[hlen:total]
	var frames [][]byte
	for start := 0; start == 0 || start < len(payload); start += size {
		end := min(start+size, len(payload))
		f := concat(frame[:l3+hlen], payload[start:end])
		h := f[l3 : l3+hlen]
		be.PutUint16(h[2:], uint16(hlen+end-start))
		if offset+start/8 > 0x1fff {
			return nil, fmt.Errorf("fragment: offset %d does not fit 13 bits", offset+start/8)
		}
		field := frag&0x4000 | uint16(offset+start/8)
		if end < len(payload) || moreAfter {
			field |= 0x2000
		}
		be.PutUint16(h[6:], field)
		h[10], h[11] = 0, 0
		be.PutUint16(h[10:], Checksum(h))
		frames = append(frames, f)
	}
	return frames, nil
}
