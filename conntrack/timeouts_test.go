package conntrack

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestDefaultTimeouts(t *testing.T) {
	want := Timeouts{
		TCPSynSent:     20 * time.Second,
		TCPEstablished: time.Hour,
		TCPFinsSeen:    30 * time.Second,
		TCPResetSeen:   40 * time.Second,
		UDP:            time.Minute,
		ICMP:           5 * time.Second,
		Generic:        10 * time.Minute,
	}
	got := DefaultTimeouts()
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("DefaultTimeouts (-want +got):\n%s", diff)
	}
	if err := got.Validate(); err != nil {
		t.Errorf("defaults do not validate: %v", err)
	}
}

func TestTimeoutsValidate(t *testing.T) {
	tests := []struct {
		name      string
		change    func(*Timeouts)
		wantNames []string
	}{
		{"zero syn-sent", func(t *Timeouts) { t.TCPSynSent = 0 }, []string{"TCPSynSent"}},
		{"negative UDP", func(t *Timeouts) { t.UDP = -time.Second }, []string{"UDP"}},
		{"two bad", func(t *Timeouts) { t.ICMP, t.Generic = 0, -1 }, []string{"ICMP", "Generic"}},
		{"all zero", func(t *Timeouts) { *t = Timeouts{} }, []string{
			"TCPSynSent", "TCPEstablished", "TCPFinsSeen", "TCPResetSeen", "UDP", "ICMP", "Generic",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			timeouts := DefaultTimeouts()
			tt.change(&timeouts)
			err := timeouts.Validate()
			if err == nil {
				t.Fatal("Validate accepted bad timeouts")
			}
			joined, ok := err.(interface{ Unwrap() []error })
			if !ok {
				t.Fatalf("Validate error %v does not list errors", err)
			}
			var got []string
			for _, e := range joined.Unwrap() {
				name, _, _ := strings.Cut(strings.TrimPrefix(e.Error(), "conntrack timeout "), " ")
				got = append(got, name)
			}
			if diff := cmp.Diff(tt.wantNames, got); diff != "" {
				t.Errorf("named timeouts (-want +got):\n%s", diff)
			}
		})
	}
}

// tcpValue returns a value whose legs have seen a and b.
func tcpValue(a, b LegFlags) Value {
	var v Value
	v.SetLegs(Leg{Flags: legFlagsField(a)}, Leg{Flags: legFlagsField(b)})
	return v
}

func TestStateOf(t *testing.T) {
	tcp := mustKey(t, ProtoTCP, "10.0.0.1:1", "10.0.0.2:2")
	synAck := LegSYN | LegACK
	tests := []struct {
		name  string
		key   Key
		value Value
		want  FlowState
	}{
		{"tcp nothing seen", tcp, tcpValue(0, 0), StateTCPSynSent},
		{"tcp syn", tcp, tcpValue(LegSYN, 0), StateTCPSynSent},
		{"tcp syn, syn-ack", tcp, tcpValue(LegSYN, synAck), StateTCPSynSent},
		{"tcp established", tcp, tcpValue(synAck, synAck), StateTCPEstablished},
		{"tcp one fin", tcp, tcpValue(synAck|LegFIN, synAck), StateTCPEstablished},
		{"tcp both fin", tcp, tcpValue(synAck|LegFIN, synAck|LegFIN), StateTCPFinsSeen},
		{"tcp FINs without handshake", tcp, tcpValue(LegFIN, LegFIN), StateTCPFinsSeen},
		{"tcp rst on A", tcp, tcpValue(synAck|LegRST, synAck), StateTCPResetSeen},
		{"tcp rst on B after FINs", tcp, tcpValue(synAck|LegFIN, synAck|LegFIN|LegRST), StateTCPResetSeen},
		{"udp", mustKey(t, ProtoUDP, "10.0.0.1:1", "10.0.0.2:2"), tcpValue(synAck, synAck), StateUDP},
		{"icmp", mustKey(t, ProtoICMP, "10.0.0.1:1", "10.0.0.2:1"), Value{}, StateICMP},
		{"icmpv6", mustKey(t, ProtoICMPv6, "[2001:db8::1]:1", "[2001:db8::2]:2"), Value{}, StateICMP},
		{"sctp", mustKey(t, ProtoSCTP, "10.0.0.1:1", "10.0.0.2:1"), Value{}, StateGeneric},
		{"gre", mustKey(t, 47, "10.0.0.1:0", "10.0.0.2:0"), tcpValue(LegRST, LegRST), StateGeneric},
	}
	for _, tt := range tests {
		if got := StateOf(tt.key, tt.value); got != tt.want {
			t.Errorf("%s: StateOf = %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestExpired(t *testing.T) {
	timeouts := Timeouts{
		TCPSynSent:     1 * time.Second,
		TCPEstablished: 2 * time.Second,
		TCPFinsSeen:    3 * time.Second,
		TCPResetSeen:   4 * time.Second,
		UDP:            5 * time.Second,
		ICMP:           6 * time.Second,
		Generic:        7 * time.Second,
	}
	synAck := LegSYN | LegACK
	tcp := mustKey(t, ProtoTCP, "10.0.0.1:1", "10.0.0.2:2")
	flows := []struct {
		key     Key
		value   Value
		timeout time.Duration
	}{
		{tcp, tcpValue(LegSYN, 0), timeouts.TCPSynSent},
		{tcp, tcpValue(synAck, synAck), timeouts.TCPEstablished},
		{tcp, tcpValue(LegFIN, LegFIN), timeouts.TCPFinsSeen},
		{tcp, tcpValue(LegRST, 0), timeouts.TCPResetSeen},
		{mustKey(t, ProtoUDP, "10.0.0.1:1", "10.0.0.2:2"), Value{}, timeouts.UDP},
		{mustKey(t, ProtoICMP, "10.0.0.1:1", "10.0.0.2:1"), Value{}, timeouts.ICMP},
		{mustKey(t, 99, "10.0.0.1:0", "10.0.0.2:0"), Value{}, timeouts.Generic},
	}
	const lastSeen = time.Hour
	for _, f := range flows {
		state := StateOf(f.key, f.value)
		if got := timeouts.For(state); got != f.timeout {
			t.Errorf("%v: timeout %v, want %v", state, got, f.timeout)
		}
		f.value.LastSeen = uint64(lastSeen)
		for _, c := range []struct {
			now  time.Duration
			want bool
		}{
			{lastSeen - time.Minute, false}, // seen after now
			{lastSeen, false},
			{lastSeen + f.timeout, false},
			{lastSeen + f.timeout + 1, true},
		} {
			if got := timeouts.Expired(f.key, f.value, c.now); got != c.want {
				t.Errorf("%v idle %v of %v: Expired = %v, want %v", state, c.now-lastSeen, f.timeout, got, c.want)
			}
			wantVerdict := Keep
			if c.want {
				wantVerdict = Delete
			}
			if got := timeouts.Check(f.key, f.value, c.now); got != wantVerdict {
				t.Errorf("%v: Check = %v, want %v", state, got, wantVerdict)
			}
		}
	}
}
