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
		return nil, errors.New("fragment: not an Ethernet frame holding an IPv4 header (FragmentIPv6 splits IPv6)")
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

// FragmentIPv6 splits an Ethernet+IPv6 frame into IPv6 fragments (RFC 8200
// section 4.5) whose fragmentable parts hold at most size bytes, rounded
// down to a multiple of 8. Each fragment is the Ethernet header with its
// VLAN tags, the unfragmentable part (the fixed header and the extension
// headers up to and including the last routing header, else a leading
// hop-by-hop header) with its own payload length and the last next header
// field set to ProtoFragment, a fragment header with id, the offset and the
// M flag and the original next header, then its slice of the rest. Splitting
// a fragment again keeps its fragment header's place, identification, next
// header, offset and M flag, and ignores id. Bytes past the payload length
// are dropped. Build the whole datagram first so its L4 checksum covers all
// of it.
func FragmentIPv6(frame []byte, size int, id uint32) ([][]byte, error) {
	_, typ, l3, err := splitEth(frame)
	if err != nil || typ != EtherTypeIPv6 || len(frame) < l3+IPv6HdrLen {
		return nil, errors.New("fragment: not an Ethernet frame holding an IPv6 header")
	}
	ip := frame[l3:]
	chain := WalkIPv6Chain(ip, MaxExtHeaders)
	if err := chain.Err(); err != nil {
		return nil, fmt.Errorf("fragment: %w", err)
	}
	end := IPv6HdrLen + int(be.Uint16(ip[4:]))
	if end > len(ip) {
		return nil, fmt.Errorf("fragment: payload length %d does not fit %d bytes", end-IPv6HdrLen, len(ip)-IPv6HdrLen)
	}
	size &^= 7
	if size < 8 {
		return nil, fmt.Errorf("fragment: size %d leaves no 8-byte unit", size)
	}
	// unfrag ends the unfragmentable part; nextAt is the next header field
	// that names what follows it.
	unfrag, nextAt := IPv6HdrLen, 6
	offset, moreAfter := 0, false
	for i, h := range chain.Headers {
		if h.Type == ProtoFragment {
			f := ip[h.Offset:]
			unfrag, nextAt = h.Offset, 6
			if i > 0 {
				nextAt = chain.Headers[i-1].Offset
			}
			id = be.Uint32(f[4:])
			offset, moreAfter = int(be.Uint16(f[2:])>>3), be.Uint16(f[2:])&1 != 0
			break
		}
		if h.Type == ProtoRouting || (i == 0 && h.Type == ProtoHopByHop) {
			unfrag, nextAt = h.Offset+h.Len, h.Offset
		}
	}
	next, rest := ip[nextAt], ip[unfrag:end]
	if offset != 0 || moreAfter {
		// Refragmenting: the old fragment header goes, its fields stay.
		next, rest = rest[0], rest[IPv6FragHdrLen:]
	}
	var frames [][]byte
	for start := 0; start == 0 || start < len(rest); start += size {
		stop := min(start+size, len(rest))
		fragOffset := offset + start/8
		if fragOffset > 0x1fff {
			return nil, fmt.Errorf("fragment: offset %d does not fit 13 bits", fragOffset)
		}
		fh := make([]byte, IPv6FragHdrLen)
		fh[0] = next
		field := uint16(fragOffset) << 3
		if stop < len(rest) || moreAfter {
			field |= 1
		}
		be.PutUint16(fh[2:], field)
		be.PutUint32(fh[4:], id)
		f := concat(frame[:l3+unfrag], fh, rest[start:stop])
		h := f[l3:]
		h[nextAt] = ProtoFragment
		be.PutUint16(h[4:], uint16(len(h)-IPv6HdrLen))
		frames = append(frames, f)
	}
	return frames, nil
}
