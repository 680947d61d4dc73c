package polprog

import (
	"fmt"
	"strconv"
	"strings"
)

// The text forms below make Rules readable and writable as JSON (or any
// encoding that uses encoding.TextMarshaler): actions by name, port ranges
// as "80" or "8000-8080". Every other field of Rules already encodes as
// itself (netip.Prefix, protocol names, rule and set IDs).

// MarshalText returns the action's name.
func (a Action) MarshalText() ([]byte, error) {
	switch a {
	case ActionAllow, ActionDeny, ActionPass, ActionLog:
		return []byte(a.String()), nil
	}
	return nil, fmt.Errorf("polprog: marshal %s: unknown action", a)
}

// UnmarshalText parses "allow", "deny", "pass" or "log".
func (a *Action) UnmarshalText(text []byte) error {
	for _, c := range []Action{ActionAllow, ActionDeny, ActionPass, ActionLog} {
		if string(text) == c.String() {
			*a = c
			return nil
		}
	}
	return fmt.Errorf("polprog: unknown action %q (want allow, deny, pass or log)", text)
}

// MarshalText returns the end action's name.
func (e EndAction) MarshalText() ([]byte, error) {
	switch e {
	case EndDeny, EndPass:
		return []byte(e.String()), nil
	}
	return nil, fmt.Errorf("polprog: marshal %s: unknown end action", e)
}

// UnmarshalText parses "deny" or "pass".
func (e *EndAction) UnmarshalText(text []byte) error {
	for _, c := range []EndAction{EndDeny, EndPass} {
		if string(text) == c.String() {
			*e = c
			return nil
		}
	}
	return fmt.Errorf("polprog: unknown end action %q (want deny or pass)", text)
}

// String returns "80" for a single port and "8000-8080" for a range.
func (r PortRange) String() string {
	if r.First == r.Last {
		return strconv.Itoa(int(r.First))
	}
	return fmt.Sprintf("%d-%d", r.First, r.Last)
}

// MarshalText returns the range's String form.
func (r PortRange) MarshalText() ([]byte, error) {
	if r.First > r.Last {
		return nil, fmt.Errorf("polprog: marshal port range %d-%d: first above last", r.First, r.Last)
	}
	return []byte(r.String()), nil
}

// UnmarshalText parses "80" or "8000-8080" (decimal, first not above last).
func (r *PortRange) UnmarshalText(text []byte) error {
	first, last, isRange := strings.Cut(string(text), "-")
	lo, err := strconv.ParseUint(first, 10, 16)
	if err != nil {
		return fmt.Errorf("polprog: port range %q: %w", text, err)
	}
	hi := lo
	if isRange {
		if hi, err = strconv.ParseUint(last, 10, 16); err != nil {
			return fmt.Errorf("polprog: port range %q: %w", text, err)
		}
	}
	if lo > hi {
		return fmt.Errorf("polprog: port range %q: first above last", text)
	}
	*r = PortRange{First: uint16(lo), Last: uint16(hi)}
	return nil
}
