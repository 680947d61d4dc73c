package ipsets

import (
	"net/netip"
	"strings"
	"testing"
)

func TestNameID(t *testing.T) {
	// Fixed by the definition: restarts and other agents agree.
	if got, want := NameID("s:default/web"), NameID("s:default/web"); got != want {
		t.Errorf("NameID differs between calls: %#x, %#x", got, want)
	}
	if NameID("a") == NameID("b") {
		t.Error("NameID(a) == NameID(b)")
	}
	// The first 8 bytes of SHA-256("abc"), ba7816bf8f01cfea.
	if got := NameID("abc"); got != 0xba7816bf8f01cfea {
		t.Errorf("NameID(abc) = %#x, want 0xba7816bf8f01cfea", got)
	}
}

func TestNamesCollision(t *testing.T) {
	var n Names
	id, err := n.ID("web")
	if err != nil || id != NameID("web") {
		t.Fatalf("ID(web) = %#x, %v", id, err)
	}
	// Force a collision by recording another name under web's ID, as a
	// real SHA-256 collision would.
	n.byID[NameID("db")] = "web"
	if _, err := n.ID("db"); err == nil || !strings.Contains(err.Error(), `already "web"'s`) {
		t.Errorf("ID(db) over a collision: %v, want an error naming web", err)
	}
	n.Release("web")
	if _, err := n.ID("db"); err == nil {
		t.Error("Release of web freed db's ID, which web did not hold")
	}
	delete(n.byID, NameID("db"))
	sets, err := n.Members(map[string]Set{"db": {Nets: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := sets[NameID("db")]; !ok {
		t.Errorf("Members keyed %v, want db's ID", sets)
	}
}
