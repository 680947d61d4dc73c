package testpkt

import (
	"errors"
	"fmt"
)

// ipv6Bytes serializes the IPv6 header, its extension headers, the L4 layer
// and the payload.
func (p Packet) ipv6Bytes() ([]byte, error) {
	ip := p.IPv6
	if !ip.Src.Is6() || !ip.Dst.Is6() {
		return nil, fmt.Errorf("ipv6: addresses %v -> %v are not both IPv6", ip.Src, ip.Dst)
	}
	l4, proto, err := p.l4Bytes()
	if err != nil {
		return nil, err
	}
	switch {
	case ip.Protocol != 0:
		proto = ip.Protocol
	case proto == 0:
		proto = ProtoNoNextHeader
	}
	var ext []byte
	for i := range ip.Ext {
		next := proto
		if i+1 < len(ip.Ext) {
			next = ip.Ext[i+1].Type
		}
		h, err := ip.Ext[i].header(next)
		if err != nil {
			return nil, fmt.Errorf("ipv6: extension header %d (type %d): %w", i, ip.Ext[i].Type, err)
		}
		ext = append(ext, h...)
	}
	first := proto
	if len(ip.Ext) > 0 {
		first = ip.Ext[0].Type
	}
	hdr, err := ip.header(first, len(ext)+len(l4))
	if err != nil {
		return nil, fmt.Errorf("ipv6: %w", err)
	}
	return concat(hdr, ext, l4), nil
}

func (ip *IPv6) header(next uint8, payloadLen int) ([]byte, error) {
	switch {
	case ip.Version > 15:
		return nil, fmt.Errorf("version %d does not fit 4 bits", ip.Version)
	case ip.FlowLabel > 0xfffff:
		return nil, fmt.Errorf("flow label %#x does not fit 20 bits", ip.FlowLabel)
	case payloadLen > 0xffff:
		return nil, fmt.Errorf("payload length %d exceeds 65535 (jumbograms are not built)", payloadLen)
	}
	plen := orDefault(ip.PayloadLen, uint16(payloadLen))
	if ip.ZeroPayloadLen {
		plen = 0
	}
	next = overrideNext(next, ip.NextHeader, ip.ZeroNextHeader)
	hop := orDefault(ip.HopLimit, DefaultHopLimit)
	if ip.ZeroHopLimit {
		hop = 0
	}
	version := overrideNext(6, ip.Version, ip.ZeroVersion)
	h := make([]byte, IPv6HdrLen)
	be.PutUint32(h[0:], uint32(version)<<28|uint32(ip.TrafficClass)<<20|ip.FlowLabel)
	be.PutUint16(h[4:], plen)
	h[6] = next
	h[7] = hop
	copy(h[8:24], ip.Src.AsSlice())
	copy(h[24:40], ip.Dst.AsSlice())
	return h, nil
}

// overrideNext applies an override and its literal-zero flag to a computed
// byte.
func overrideNext(computed, override uint8, zero bool) uint8 {
	switch {
	case zero:
		return 0
	case override != 0:
		return override
	}
	return computed
}

// header serializes one extension header whose next header field names next.
func (e *IPv6Ext) header(next uint8) ([]byte, error) {
	var h []byte
	var length uint8
	switch e.Type {
	case ProtoFragment:
		switch {
		case len(e.Data) != 0:
			return nil, errors.New("a fragment header has no Data")
		case e.FragOffset > 0x1fff:
			return nil, fmt.Errorf("fragment offset %d does not fit 13 bits", e.FragOffset)
		case e.FragReserved > 3:
			return nil, fmt.Errorf("reserved bits %d do not fit 2 bits", e.FragReserved)
		}
		h = make([]byte, IPv6FragHdrLen)
		field := e.FragOffset<<3 | uint16(e.FragReserved)<<1
		if e.MoreFragments {
			field |= 1
		}
		be.PutUint16(h[2:], field)
		be.PutUint32(h[4:], e.FragID)
	case ProtoAH:
		// At least the 8 bytes a zero length field describes, then whole
		// 4-byte words.
		total := max(8, roundUp(2+len(e.Data), 4))
		if total > (255+2)*4 {
			return nil, fmt.Errorf("%d bytes of AH, at most %d fit", total, (255+2)*4)
		}
		h = make([]byte, total)
		copy(h[2:], e.Data)
		length = uint8(total/4 - 2)
	default:
		total := roundUp(2+len(e.Data), 8)
		if total > IPv6MaxExtLen {
			return nil, fmt.Errorf("%d bytes of header, at most %d fit", total, IPv6MaxExtLen)
		}
		h = make([]byte, total)
		copy(h[2:], e.Data)
		if e.Type == ProtoHopByHop || e.Type == ProtoDestOpts {
			padOptions(h[2+len(e.Data):])
		}
		length = uint8(total/8 - 1)
	}
	h[0] = overrideNext(next, e.NextHeader, e.ZeroNextHeader)
	h[1] = overrideNext(length, e.Length, e.ZeroLength)
	return h, nil
}

// padOptions fills pad, the end of an options header, with one Pad1 option
// or a PadN option covering all of it (RFC 8200 section 4.2).
func padOptions(pad []byte) {
	switch len(pad) {
	case 0:
	case 1:
		pad[0] = IPv6OptPad1
	default:
		pad[0], pad[1] = IPv6OptPadN, uint8(len(pad)-2)
		clear(pad[2:])
	}
}

func roundUp(n, unit int) int { return (n + unit - 1) / unit * unit }

// message is the ICMPv6 header and payload with a zero checksum.
func (c *ICMPv6) message(payload []byte) []byte {
	b := make([]byte, ICMPv6HdrLen, ICMPv6HdrLen+len(payload))
	b[0], b[1] = c.Type, c.Code
	if c.IsEcho() {
		be.PutUint16(b[4:], c.ID)
		be.PutUint16(b[6:], c.Seq)
	} else {
		copy(b[4:], c.Rest[:])
	}
	return append(b, payload...)
}
