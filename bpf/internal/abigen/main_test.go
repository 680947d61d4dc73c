package main

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParseEnum(t *testing.T) {
	tests := []struct {
		arg     string
		want    enumSpec
		wantErr bool
	}{
		{arg: "sl_reason=Reason:SL_REASON_:Reason", want: enumSpec{"sl_reason", "Reason", "SL_REASON_", "Reason", false}},
		{arg: "sl_iface_flags=IfaceFlags:SL_IFACE_:Iface:flags", want: enumSpec{"sl_iface_flags", "IfaceFlags", "SL_IFACE_", "Iface", true}},
		{arg: "sl_x=X::", want: enumSpec{"sl_x", "X", "", "", false}},
		{arg: "sl_x=X:SL_X_:X:bits", wantErr: true},
		{arg: "sl_x=X:SL_X_", wantErr: true},
		{arg: "sl_x", wantErr: true},
		{arg: "=X:A:B", wantErr: true},
		{arg: "sl_x=:A:B", wantErr: true},
	}
	for _, tt := range tests {
		got, err := parseEnum(tt.arg)
		if (err != nil) != tt.wantErr {
			t.Errorf("parseEnum(%q) error %v, want error %v", tt.arg, err, tt.wantErr)
			continue
		}
		if diff := cmp.Diff(tt.want, got); !tt.wantErr && diff != "" {
			t.Errorf("parseEnum(%q) (-want +got):\n%s", tt.arg, diff)
		}
	}
}

func TestParseArgsMissing(t *testing.T) {
	t.Setenv("GOPACKAGE", "")
	_, err := parseArgs([]string{"-struct", "sl_x=X"})
	if err == nil || !strings.Contains(err.Error(), "missing -headers, -obj, -out, -pkg") {
		t.Errorf("parseArgs = %v, want the missing options listed", err)
	}
}
