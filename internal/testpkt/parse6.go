package testpkt

import (
	"fmt"
	"net/netip"
)

// ChainStop says why WalkIPv6Chain stopped.
type ChainStop uint8

// The reasons a walk of the IPv6 extension chain stops. The first two end
// a well-formed chain; the others are malformations, which Parse reports as
// a *ChainError.
const (
	// ChainUpperLayer: the next header is not an extension header (TCP,
	// UDP, ICMPv6, ESP, No Next Header or any other protocol).
	ChainUpperLayer ChainStop = iota
	// ChainNonFirstFragment: a fragment header with a non-zero offset;
	// what follows it is the middle of a datagram, not headers.
	ChainNonFirstFragment
	// ChainTooLong: more extension headers than the walk's limit.
	ChainTooLong
	// ChainHopByHopNotFirst: a hop-by-hop header after another extension
	// header (RFC 8200 section 4.3 allows it only right after the fixed
	// header).
	ChainHopByHopNotFirst
	// ChainPastPayloadLen: a header reaches past the payload length, or
	// its length byte lies past it.
	ChainPastPayloadLen
	// ChainPastFrame: a header reaches past the end of the bytes, which
	// end before the payload length does (or before the fixed header).
	ChainPastFrame
)

var chainStopNames = [...]string{
	ChainUpperLayer:       "upper layer",
	ChainNonFirstFragment: "non-first fragment",
	ChainTooLong:          "too many extension headers",
	ChainHopByHopNotFirst: "hop-by-hop header not first",
	ChainPastPayloadLen:   "header past the payload length",
	ChainPastFrame:        "header past the end of the frame",
}

// String describes the reason.
func (s ChainStop) String() string {
	if int(s) < len(chainStopNames) {
		return chainStopNames[s]
	}
	return fmt.Sprintf("ChainStop(%d)", uint8(s))
}

// ChainHeader is one extension header a walk read: its type, and where it
// lies in the IPv6 packet.
type ChainHeader struct {
	Type uint8
	// Offset is from the start of the fixed IPv6 header; Len is the
	// header's whole size in bytes.
	Offset, Len int
}

// IPv6Chain is the result of walking an IPv6 extension chain: the headers
// read and where and why the walk stopped.
type IPv6Chain struct {
	Headers []ChainHeader
	// Proto is the next header value at the stop: the upper layer's
	// protocol, a non-first fragment's next header, or the type of the
	// header that could not be read.
	Proto uint8
	// Offset is where the walk stopped, from the start of the fixed
	// header: where the upper layer or a fragment's data starts, or where
	// the header that could not be read starts.
	Offset int
	// NextHeaderAt is the offset of the next header field that holds Proto:
	// 6 in the fixed header, or the offset of the last header read. An
	// ICMPv6 parameter problem about an unknown next header points here.
	NextHeaderAt int
	Stop         ChainStop
}

// WalkIPv6Chain walks the extension headers of the IPv6 packet pkt (from
// the fixed header on, as far as the bytes go) the way a receiver does:
// within the payload length, or the bytes when they end first, reading at
// most limit extension headers (IsIPv6ExtHeader), and stopping at a
// non-first fragment. The length of each header comes from its own length
// byte: a fragment header is 8 bytes, AH (length+2)*4 and every other
// (length+1)*8. A pkt shorter than the fixed header stops at once with
// ChainPastFrame.
func WalkIPv6Chain(pkt []byte, limit int) IPv6Chain {
	if len(pkt) < IPv6HdrLen {
		return IPv6Chain{Stop: ChainPastFrame}
	}
	end, short := IPv6HdrLen+int(be.Uint16(pkt[4:])), ChainPastPayloadLen
	if end > len(pkt) {
		end, short = len(pkt), ChainPastFrame
	}
	c := IPv6Chain{Proto: pkt[6], Offset: IPv6HdrLen, NextHeaderAt: 6}
	for IsIPv6ExtHeader(c.Proto) {
		switch {
		case c.Proto == ProtoHopByHop && len(c.Headers) > 0:
			c.Stop = ChainHopByHopNotFirst
			return c
		case len(c.Headers) >= limit:
			c.Stop = ChainTooLong
			return c
		case c.Offset+2 > end:
			c.Stop = short
			return c
		}
		n := extLen(c.Proto, pkt[c.Offset+1])
		if c.Offset+n > end {
			c.Stop = short
			return c
		}
		h := pkt[c.Offset : c.Offset+n]
		c.Headers = append(c.Headers, ChainHeader{Type: c.Proto, Offset: c.Offset, Len: n})
		c.NextHeaderAt, c.Offset = c.Offset, c.Offset+n
		fragment := c.Proto == ProtoFragment
		c.Proto = h[0]
		if fragment && be.Uint16(h[2:])>>3 != 0 {
			c.Stop = ChainNonFirstFragment
			return c
		}
	}
	c.Stop = ChainUpperLayer
	return c
}

// extLen is the size of an extension header of type typ by its length byte.
func extLen(typ, length uint8) int {
	switch typ {
	case ProtoFragment:
		return IPv6FragHdrLen
	case ProtoAH:
		return (int(length) + 2) * 4
	}
	return (int(length) + 1) * 8
}

// Err is nil for a walk that ended the chain (ChainUpperLayer,
// ChainNonFirstFragment), and otherwise a *ChainError saying where and why
// it stopped.
func (c IPv6Chain) Err() error {
	if c.Stop == ChainUpperLayer || c.Stop == ChainNonFirstFragment {
		return nil
	}
	return &ChainError{Stop: c.Stop, Index: len(c.Headers), Offset: c.Offset, Proto: c.Proto}
}

// ChainError is the error of an IPv6 extension chain that could not be
// walked. It wraps ErrTruncated for ChainPastPayloadLen and ChainPastFrame,
// and ErrMalformed for the other reasons.
type ChainError struct {
	Stop ChainStop
	// Index counts the extension headers read before the stop: the header
	// that stopped the walk is the chain's header Index (from 0).
	Index int
	// Offset is where that header starts, from the fixed header.
	Offset int
	// Proto is that header's type.
	Proto uint8
}

// Error describes where the walk stopped and why.
func (e *ChainError) Error() string {
	return fmt.Sprintf("extension header %d (type %d) at offset %d: %s: %v", e.Index, e.Proto, e.Offset, e.Stop, e.Unwrap())
}

// Unwrap returns ErrTruncated or ErrMalformed.
func (e *ChainError) Unwrap() error {
	if e.Stop == ChainPastPayloadLen || e.Stop == ChainPastFrame {
		return ErrTruncated
	}
	return ErrMalformed
}

func (p *Packet) parseIPv6(b []byte) error {
	if len(b) < IPv6HdrLen {
		return fmt.Errorf("header: %d of %d bytes: %w", len(b), IPv6HdrLen, ErrTruncated)
	}
	chain := WalkIPv6Chain(b, MaxExtHeaders)
	if err := chain.Err(); err != nil {
		return err
	}
	end := IPv6HdrLen + int(be.Uint16(b[4:]))
	if end > len(b) {
		return fmt.Errorf("payload length %d, have %d bytes: %w", end-IPv6HdrLen, len(b)-IPv6HdrLen, ErrTruncated)
	}
	w := be.Uint32(b[0:])
	ip := &IPv6{
		Src:          netip.AddrFrom16([16]byte(b[8:24])),
		Dst:          netip.AddrFrom16([16]byte(b[24:40])),
		TrafficClass: uint8(w >> 20),
		FlowLabel:    w & 0xfffff,
		HopLimit:     b[7],
		ZeroHopLimit: b[7] == 0,
	}
	if version := b[0] >> 4; version != 6 {
		ip.Version, ip.ZeroVersion = version, version == 0
	}
	for _, h := range chain.Headers {
		ip.Ext = append(ip.Ext, parseExt(h.Type, b[h.Offset:h.Offset+h.Len]))
	}
	p.IPv6 = ip
	p.Trailer = cloneOrNil(b[end:])

	l4 := b[chain.Offset:end]
	if chain.Stop == ChainNonFirstFragment {
		// Protocol 0 would mean derived: a hop-by-hop next header is
		// written by the fragment header's override.
		ip.Protocol = chain.Proto
		ip.Ext[len(ip.Ext)-1].ZeroNextHeader = chain.Proto == 0
		p.Payload = cloneOrNil(l4)
		return nil
	}
	switch chain.Proto {
	case ProtoTCP:
		return p.parseTCP(l4)
	case ProtoUDP:
		return p.parseUDP(l4)
	case ProtoICMPv6:
		return p.parseICMPv6(l4)
	case ProtoNoNextHeader:
	default:
		ip.Protocol = chain.Proto
	}
	p.Payload = cloneOrNil(l4)
	return nil
}

// parseExt decodes one extension header h of type typ, whose length the
// walk has checked.
func parseExt(typ uint8, h []byte) IPv6Ext {
	e := IPv6Ext{Type: typ}
	if typ != ProtoFragment {
		e.Data = cloneOrNil(h[2:])
		return e
	}
	field := be.Uint16(h[2:])
	e.FragOffset = field >> 3
	e.FragReserved = uint8(field>>1) & 3
	e.MoreFragments = field&1 != 0
	e.FragID = be.Uint32(h[4:])
	e.Length = h[1]
	return e
}

func (p *Packet) parseICMPv6(b []byte) error {
	if len(b) < ICMPv6HdrLen {
		return fmt.Errorf("icmpv6 header: %d of %d bytes: %w", len(b), ICMPv6HdrLen, ErrTruncated)
	}
	c := &ICMPv6{Type: b[0], Code: b[1]}
	if c.IsEcho() {
		c.ID, c.Seq = be.Uint16(b[4:]), be.Uint16(b[6:])
	} else {
		c.Rest = [4]byte(b[4:8])
	}
	msg := concat(b)
	msg[2], msg[3] = 0, 0
	src, dst := p.l4Addrs()
	c.Checksum, c.ZeroChecksum, c.BadChecksum = classifyChecksum(be.Uint16(b[2:]), L4Checksum(src, dst, ProtoICMPv6, msg))
	p.ICMPv6 = c
	p.Payload = cloneOrNil(b[ICMPv6HdrLen:])
	return nil
}
