package polprog

import (
	"math/rand/v2"
	"net/netip"
	"testing"
)

// TestV4Table holds the IPv4 stride table to the longest match among a
// dimension's prefixes (what the address trie returns), on random prefix
// sets of every length (nested, overlapping, IPv6 ones mixed in) and
// addresses drawn near them, and checks the size bound.
func TestV4Table(t *testing.T) {
	r := rand.New(rand.NewPCG(8, 8))
	for round := range 200 {
		var pool [][4]byte
		for range 1 + r.IntN(6) {
			pool = append(pool, [4]byte{byte(r.IntN(3)), byte(r.IntN(3)), byte(r.IntN(3)), byte(r.IntN(256))})
		}
		addr := func() [4]byte {
			a := pool[r.IntN(len(pool))]
			if r.IntN(3) == 0 {
				a[r.IntN(4)] ^= byte(1 << r.IntN(8))
			}
			return a
		}
		seen := map[netip.Prefix]bool{}
		var prefix []prefixRow
		for range r.IntN(40) {
			p := netip.PrefixFrom(netip.AddrFrom4(addr()), r.IntN(33)).Masked()
			if r.IntN(5) == 0 {
				p = netip.PrefixFrom(netip.AddrFrom16([16]byte{0xfd, byte(r.IntN(2))}), r.IntN(129)).Masked()
			}
			if !seen[p] {
				seen[p] = true
				prefix = append(prefix, prefixRow{p: p, row: uint32(1 + r.IntN(1000))})
			}
		}
		chunks := buildV4(prefix)
		if chunks == nil {
			t.Fatalf("round %d: %d prefixes: no table", round, len(prefix))
		}
		for range 500 {
			a := addr()
			if r.IntN(8) == 0 {
				a = [4]byte{byte(r.IntN(256)), byte(r.IntN(256)), byte(r.IntN(256)), byte(r.IntN(256))}
			}
			want, best := uint32(0), -1
			for _, pr := range prefix {
				if pr.p.Contains(netip.AddrFrom4(a)) && pr.p.Bits() > best {
					want, best = pr.row, pr.p.Bits()
				}
			}
			if got := v4Row(chunks, a); got != want {
				t.Fatalf("round %d: %v: row %d, want %d (prefixes %v)", round, netip.AddrFrom4(a), got, want, prefix)
			}
		}
	}
	// One /32 in each of maxV4Chunks /24s needs a chunk for each /24 and
	// the /16s and /8s above them: more than the bound.
	var many []prefixRow
	for i := range maxV4Chunks {
		many = append(many, prefixRow{p: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 1}), 32), row: 1})
	}
	if buildV4(many) != nil {
		t.Errorf("%d /32s in as many /24s: a table, want none (more than %d chunks)", len(many), maxV4Chunks)
	}
}
