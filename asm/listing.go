package asm

import (
	"fmt"
	"strconv"
	"strings"
)

// Listing assembles the Block and returns an annotated listing of the result,
// one instruction per line with its slot, preceded by its comments and labels.
// Jumps name the label they were written for; trampoline instructions say so.
// The format is meant for people and golden files, not for parsing.
func (b *Block) Listing() (string, error) {
	a, err := b.assemble()
	if err != nil {
		return "", err
	}
	width := len(strconv.Itoa(max(a.slots-1, 0)))
	var sb strings.Builder
	for i := range a.out {
		p := &a.out[i]
		for _, c := range p.comments {
			fmt.Fprintf(&sb, "%*s  ; %s\n", width, "", c)
		}
		for _, l := range p.labels {
			fmt.Fprintf(&sb, "%s:\n", l)
		}
		fmt.Fprintf(&sb, "%*d: %v", width, p.slot, p.ins)
		switch {
		case p.kind == placedSkip:
			sb.WriteString("  ; trampoline: skip")
		case p.kind == placedEntry:
			fmt.Fprintf(&sb, "  ; trampoline -> %s", p.label)
		case p.finalItem >= 0 && p.viaEntry >= 0:
			fmt.Fprintf(&sb, "  -> %s (via trampoline at %d)", p.label, a.out[p.viaEntry].slot)
		case p.finalItem >= 0:
			fmt.Fprintf(&sb, "  -> %s", p.label)
		}
		sb.WriteByte('\n')
	}
	return sb.String(), nil
}
